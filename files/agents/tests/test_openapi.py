"""The OpenAPI documents are valid, served, and true of real responses of both servers.

A real neuron with tiny GGUF models and a real gateway over it, on loopback; each
response (success and error) is validated against the shipped document.
"""

from __future__ import annotations

import re

import pytest
import requests
from openapi_spec_validator import validate

from cortex.core import openapi
from cortex.gateway.config import EntitlementsSection, KeyEntry, ModelEntry
from cortex.neuron.config import AdmissionConfig
from cortex.testing.openapi_check import Contract
from cortex.testing.waiting import wait_for

TOKEN = "neuron-secret"
KEY, ADMIN = "sk-test", "admin-test"
MSG = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("package", ["cortex.neuron", "cortex.gateway"])
def test_the_documents_are_valid_openapi_31(package):
    doc = openapi.document(package)
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises on any error


@pytest.fixture
def served(neuron_factory, gateway_factory):
    n = neuron_factory(auth_token=TOKEN, admission=AdmissionConfig(max_queue_depth=0))
    n.http.headers["Authorization"] = f"Bearer {TOKEN}"
    n.load("file:tiny-hello")
    ent = EntitlementsSection(require_auth=True, keys=[
        KeyEntry(key=KEY, account_id="acme")])
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")], neuron_token=TOKEN,
                         admin_keys=[ADMIN], entitlements=ent)
    return n, gw


def test_neuron_responses_match_its_document(served):
    n, _ = served
    c = Contract("cortex.neuron")
    bare = requests.Session()  # no token
    r = c.check(bare.get(n.url + "/openapi.json"))
    assert r.status_code == 200 and r.json() == openapi.document("cortex.neuron")
    assert c.check(bare.get(n.url + "/health")).status_code == 200
    assert c.check(bare.get(n.url + "/version")).status_code == 200
    assert c.check(bare.get(n.url + "/discovery")).status_code == 401
    for path in ("/discovery", "/models", "/v1/models", "/metrics"):
        assert c.check(n.get(path)).status_code == 200, path
    assert c.check(n.get("/models/file:tiny-hello/endpoint")).status_code == 200
    assert c.check(n.get("/models/file:tiny-nope/endpoint")).status_code == 404
    assert c.check(n.get("/models/file:tiny-hello/capabilities")).json()["loaded"] is True
    assert c.check(n.get("/models/file:tiny-tool/capabilities")).json()["loaded"] is False

    # Inference: whole and streamed, chat and text, and the counting route.
    chat = {"model": "file:tiny-hello", "messages": MSG, "max_tokens": 8}
    assert c.check(n.post("/v1/chat/completions", chat)).status_code == 200
    r = c.check(n.post("/v1/chat/completions", dict(chat, stream=True)))
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    text = {"model": "file:tiny-hello", "prompt": "Hi", "max_tokens": 4}
    assert c.check(n.post("/v1/completions", text)).status_code == 200
    assert c.check(n.post("/v1/completions", dict(text, stream=True))).status_code == 200
    assert c.check(n.post("/tokenize", chat)).status_code == 200

    # Errors: each status the routes document, with its envelope.
    cases = [
        ("/v1/chat/completions", dict(chat, model="file:tiny-nope"), 404),
        ("/v1/chat/completions", {"model": "file:tiny-hello"}, 400),
        ("/v1/chat/completions", dict(chat, temperature=9), 422),
        ("/v1/chat/completions", [1, 2], 422),
        ("/v1/completions", {"model": "file:tiny-hello", "prompt": 3}, 422),
        ("/tokenize", {"model": "file:tiny-nope", "prompt": "x"}, 404),
        ("/models/load", {}, 400),
        ("/models/load", {"model_id": "file:tiny-absent"}, 422),
        ("/models/load", {"model_id": "file:tiny-hello", "devices": "x"}, 422),
        ("/models/unload", {"model_id": "file:tiny-absent"}, 404),
        ("/drain", {"drained": "yes"}, 422),
    ]
    for path, body, status in cases:
        r = c.check(n.post(path, body))
        assert r.status_code == status, (path, body, r.text)
    r = c.check(n.post("/v1/chat/completions", data="{not json",
                       headers={"Content-Type": "application/json"}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = c.check(n.post("/v1/chat/completions", data="x", headers={"Content-Type": "text/plain"}))
    assert r.status_code == 415
    assert c.check(bare.post(n.url + "/v1/chat/completions", json=chat)).status_code == 401

    # Lifecycle: a fresh load, drain and undrain, an unload.
    r = c.check(n.post("/models/load", {"model_id": "file:tiny-tied"}))
    assert r.json()["already_loaded"] is False
    assert c.check(n.post("/models/load", {"model_id": "file:tiny-tied"})).json()[
        "already_loaded"] is True
    assert c.check(n.post("/drain", {"drained": True})).json()["drained"] is True
    assert c.check(n.post("/drain", {"drained": False})).json()["drained"] is False
    assert c.check(n.post("/models/unload", {"model_id": "file:tiny-tied"})).status_code == 200


def test_neuron_embeddings_match_its_document(served):
    n, _ = served
    c = Contract("cortex.neuron")
    body = {"model": "file:tiny-hello", "input": ["Hi", "Hello"]}
    assert c.check(n.post("/v1/embeddings", body)).status_code == 200
    r = c.check(n.post("/v1/embeddings", dict(body, encoding_format="base64")))
    assert r.status_code == 200 and isinstance(r.json()["data"][0]["embedding"], str)
    for bad, status in (({"input": ""}, 400), ({"input": [[1.5]]}, 400),
                        ({"encoding_format": "hex"}, 400), ({"model": "file:nope"}, 404)):
        r = c.check(n.post("/v1/embeddings", dict(body, **bad)))
        assert r.status_code == status, (bad, r.text)
    r = c.check(n.post("/models/load", {"model_id": "file:tiny-tied", "embeddings_only": True}))
    assert r.json()["model"]["capabilities"] == ["embeddings"]
    r = c.check(n.post("/v1/chat/completions", {"model": "file:tiny-tied", "messages": MSG}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_embeddings_only"


def test_neuron_busy_answers_503_with_retry_after(served):
    """A full queue (one slot, max_queue_depth=0, a long generation running) is the
    documented 503."""
    n, _ = served
    c = Contract("cortex.neuron")
    n.load("file:tiny-long", parallel=1)
    body = {"model": "file:tiny-long", "messages": MSG, "stream": True}
    long = n.http.post(n.url + "/v1/chat/completions", json=body, stream=True, timeout=60)
    try:
        scheduler = n.neuron.registry.models["file:tiny-long"].scheduler
        wait_for(lambda: scheduler.in_flight == 1, "the long generation running", 20)
        r = c.check(n.post("/v1/chat/completions", dict(body, stream=False)))
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
    finally:
        long.close()


def test_gateway_responses_match_its_document(served):
    _, gw = served
    c = Contract("cortex.gateway")
    anon = requests.Session()
    user = requests.Session()
    user.headers["Authorization"] = f"Bearer {KEY}"
    admin = requests.Session()
    admin.headers["Authorization"] = f"Bearer {ADMIN}"
    u = gw.url
    r = c.check(anon.get(u + "/openapi.json"))
    assert r.json() == openapi.document("cortex.gateway")
    assert c.check(anon.get(u + "/")).status_code == 200
    assert c.check(anon.get(u + "/health")).status_code == 200
    assert c.check(anon.get(u + "/v1/models")).status_code == 401
    assert c.check(user.get(u + "/v1/models")).status_code == 200

    chat = {"model": "tiny-hello", "messages": MSG, "max_tokens": 8}
    r = c.check(user.post(u + "/v1/chat/completions", json=chat))
    assert r.status_code == 200 and r.headers["X-Cortex-Node"] == "n1"
    r = c.check(user.post(u + "/v1/chat/completions", json=dict(chat, stream=True)))
    assert r.status_code == 200
    text = {"model": "tiny-hello", "prompt": "Hi", "max_tokens": 4}
    assert c.check(user.post(u + "/v1/completions", json=text)).status_code == 200
    r = c.check(user.post(u + "/v1/completions", json=dict(text, stream=True)))
    assert r.status_code == 200
    for body, status in ((dict(chat, model="nope"), 404), ({"messages": MSG}, 400),
                         (dict(chat, temperature=9), 422), ([1], 422)):
        r = c.check(user.post(u + "/v1/chat/completions", json=body))
        assert r.status_code == status, (body, r.text)
    assert c.check(anon.post(u + "/v1/chat/completions", json=chat)).status_code == 401
    r = c.check(user.post(u + "/v1/completions", data="{", headers={
        "Content-Type": "application/json"}))
    assert r.status_code == 400

    # Anthropic: its own shapes and its own error envelope.
    msg = {"model": "tiny-hello", "max_tokens": 8, "messages": MSG}
    r = c.check(user.post(u + "/v1/messages", json=msg))
    assert r.status_code == 200 and r.json()["type"] == "message"
    r = c.check(user.post(u + "/v1/messages", json=dict(msg, stream=True)))
    assert r.status_code == 200 and "message_stop" in r.text
    xkey = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    r = c.check(anon.post(u + "/v1/messages/count_tokens", json=msg, headers=xkey))
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    for body, status in (({"model": "tiny-hello", "messages": MSG}, 400),
                         (dict(msg, model="nope"), 404)):
        r = c.check(user.post(u + "/v1/messages", json=body))
        assert r.status_code == status and r.json()["type"] == "error", r.text
    assert c.check(anon.post(u + "/v1/messages", json=msg)).status_code == 401

    # Admin.
    assert c.check(user.get(u + "/admin/nodes")).status_code == 401
    assert c.check(admin.get(u + "/admin/nodes")).status_code == 200
    assert c.check(admin.post(u + "/admin/nodes/n1/drain")).json()["drained"] is True
    assert c.check(admin.post(u + "/admin/nodes/n1/undrain")).json()["drained"] is False
    assert c.check(admin.post(u + "/admin/nodes/n9/drain")).status_code == 404
    load = {"model": "file:tiny-tied"}
    assert c.check(admin.post(u + "/admin/nodes/n1/models/load", json=load)).status_code == 200
    assert c.check(admin.post(u + "/admin/nodes/n1/models/unload", json=load)
                   ).status_code == 200
    assert c.check(admin.post(u + "/admin/nodes/n1/models/unload", json=load)
                   ).status_code == 404
    r = c.check(admin.post(u + "/admin/nodes/n1/models/load", json={"model": "file:tiny-x"}))
    assert r.status_code == 422 and r.json()["error"]["kind"]


@pytest.mark.parametrize("path, body", [
    ("/v1/responses", {"model": "tiny-hello", "input": "Hi", "max_output_tokens": 8}),
    ("/v1/embeddings", {"model": "tiny-hello", "input": "Hi"}),
])
def test_gateway_newer_routes_match_the_document(served, path, body):
    """The Responses and embeddings routes, where this build serves them."""
    _, gw = served
    c = Contract("cortex.gateway")
    r = requests.post(gw.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60)
    if r.status_code == 404 and r.json()["error"]["code"] == "not_found":
        pytest.skip(f"{path} is not served by this build")
    c.check(r)
    assert r.status_code < 500, r.text


def test_gateway_without_healthy_neurons_is_503_with_retry_after(gateway_factory):
    from cortex.testing.ports import free_port

    class Gone:
        url = f"http://127.0.0.1:{free_port()}"

    gw = gateway_factory({"n1": Gone()}, [ModelEntry(id="tiny-hello")], connect_timeout_secs=0.5)
    c = Contract("cortex.gateway")
    chat = {"model": "tiny-hello", "messages": MSG}
    r = c.check(requests.post(gw.url + "/v1/chat/completions", json=chat, timeout=30))
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    r = c.check(requests.post(gw.url + "/v1/messages", json=dict(chat, max_tokens=4),
                              timeout=30))
    assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded_error"
    h = c.check(requests.get(gw.url + "/health", timeout=30)).json()
    assert h["status"] == "impaired"


# Documented ahead of the build that serves them (the OpenAI Responses route).
AHEAD = {"/v1/responses"}


def test_every_documented_route_is_served_and_every_route_documented(served):
    n, gw = served
    for server, package, key in ((n, "cortex.neuron", TOKEN), (gw, "cortex.gateway", ADMIN)):
        doc = openapi.document(package)
        for path, ops in doc["paths"].items():
            url = server.url + re.sub(r"\{[^}]+\}", "x", path)
            for method in ops:
                # No body: a POST is refused (400) before it changes anything.
                r = requests.request(method, url, timeout=60,
                                     headers={"Authorization": f"Bearer {key}"})
                unknown = r.status_code == 404 and r.json()["error"].get("code") == "not_found"
                assert not unknown or path in AHEAD, f"{package}: {method} {path} not served"
        # The Flask routes (the hot paths are WSGI, and documented above); the dashboard's
        # pages are not API.
        rules = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule)
                 for r in server.app.url_map.iter_rules()}
        undocumented = {r for r in rules - set(doc["paths"])
                        if not r.startswith(("/static", "/ui"))}
        assert not undocumented, f"{package}: served but not documented: {undocumented}"
