"""Regression tests for the 5xx that the fuzzer (test_fuzz_api.py) found, on real servers.

Each failed before its fix: a non-string `messages[].role` was a TypeError (a neuron 500,
retried by the gateway into a 502), and an empty prompt reached llama.cpp with no tokens.
"""

from __future__ import annotations

import pytest
import requests

from cortex.gateway.config import ModelEntry
from cortex.testing.openapi_check import Contract

MSG = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def pair(neuron_factory, gateway_factory):
    n = neuron_factory()
    n.load("file:tiny-hello")
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")])
    return n, gw


def _names_field(r, field: str) -> bool:
    err = r.json().get("error", {})
    return err.get("param") == field or field in err.get("message", "")


@pytest.mark.parametrize("role", [{}, [], ["user"]])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
def test_neuron_non_string_role_is_a_4xx_naming_it(pair, path, role):
    n, _ = pair
    r = n.post(path, {"model": "file:tiny-hello", "messages": [{"role": role, "content": "Hi"}]})
    assert r.status_code in (400, 422), r.text
    assert _names_field(r, "messages[0].role"), r.text
    Contract("cortex.neuron").check(r)


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": "tiny-hello", "messages": [{"role": {}, "content": "x"}]}),
    ("/v1/chat/completions", {"model": "tiny-hello", "stream": True,
                              "messages": [{"role": [], "content": "x"}]}),
])
def test_gateway_non_string_role_is_the_neurons_4xx(pair, path, body):
    _, gw = pair
    r = gw.post(path, body)
    assert r.status_code in (400, 422), r.text
    assert _names_field(r, "messages[0].role"), r.text
    Contract("cortex.gateway").check(r)


@pytest.mark.parametrize("prompt", ["", [""]])
@pytest.mark.parametrize("stream", [False, True])
def test_empty_prompt_is_no_server_error(pair, prompt, stream):
    n, gw = pair
    for server, model, package in ((n, "file:tiny-hello", "cortex.neuron"),
                                   (gw, "tiny-hello", "cortex.gateway")):
        r = server.post("/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 4,
                                            "stream": stream})
        assert r.status_code < 500, r.text
        if stream and r.status_code == 200:
            assert '"internal_error"' not in r.text and '"generation_failed"' not in r.text
        if r.status_code >= 400:
            assert _names_field(r, "prompt"), r.text
        Contract(package).check(r)


def test_a_number_past_a_double_anywhere_is_a_400_naming_it(pair):
    # Property: a number that overflows a double (1e400), put anywhere in a valid request,
    # is refused by both servers with a 400 naming where it is. It once parsed to infinity
    # (the gateway forwarded null; a sampler got garbage).
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    n, gw = pair
    marker = "__HUGE__"
    bases = [
        ("/v1/chat/completions", {"messages": MSG, "max_tokens": 4, "temperature": 0.5,
                                  "tools": [{"type": "function", "function": {
                                      "name": "f", "parameters": {"type": "object"}}}]}),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 4, "top_p": 0.9}),
    ]

    def paths(value, where=""):
        yield where
        if isinstance(value, dict):
            for k, v in value.items():
                yield from paths(v, f"{where}.{k}" if where else k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from paths(v, f"{where}[{i}]")

    def put(body, where, value):
        import re

        parts = re.findall(r"[^.\[\]]+|\[\d+\]", where)
        node = body
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        last = parts[-1]
        if last.startswith("["):
            node[int(last[1:-1])] = value
        else:
            node[last] = value

    @settings(max_examples=12, deadline=None, derandomize=True, database=None)
    @given(base=st.sampled_from(bases), pick=st.integers(0, 10**6),
           literal=st.sampled_from(["1e400", "-1e309", "1" + "0" * 400 + ".5"]))
    def check(base, pick, literal):
        path, body = base
        spots = [p for p in paths(body) if p]
        where = spots[pick % len(spots)]
        for server, model, package in ((n, "file:tiny-hello", "cortex.neuron"),
                                       (gw, "tiny-hello", "cortex.gateway")):
            doc = json.loads(json.dumps({"model": model, **body}))
            put(doc, where, marker)
            raw = json.dumps(doc).replace(f'"{marker}"', literal)
            r = server.http.post(server.url + path, data=raw, timeout=30,
                                 headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (where, r.text)
            assert r.json()["error"]["param"] == where, (where, r.text)
            Contract(package).check(r)

    check()


def test_a_streamed_response_starts_as_its_document_says(pair):
    # The long fuzz run (issue 19 Evidence): response.created and response.in_progress
    # carry "usage": null (as OpenAI's do), which the document called an object.
    _, gw = pair
    r = gw.post("/v1/responses", {"model": "tiny-hello", "input": "Hi", "stream": True,
                                  "max_output_tokens": 4})
    assert r.status_code == 200 and '"usage":null' in r.text, r.text[:300]
    Contract("cortex.gateway").check(r)


@pytest.mark.parametrize("path", ["/admin/models/load", "/admin/models/unload"])
def test_the_fleet_admin_routes_document_their_415_and_422(pair, gateway_factory, path):
    # The long fuzz runs: a body without a Content-Type is a 415 there too, and unload's
    # 422 for a body that is not an object (both undocumented).
    n, _ = pair
    admin_key = "sk-admin-fuzz-regressions"
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")], admin_keys=[admin_key])
    r = requests.post(gw.url + path, data=b"{}",
                      headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    Contract("cortex.gateway").check(r)
    # And a body that is JSON but not an object is a 422 both document.
    r = requests.post(gw.url + path, json=[None, None],
                      headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request_body"
    Contract("cortex.gateway").check(r)
