"""Contract test: the collection's private client against the REAL neuron and gateway apps.

The modules cannot import the agents' package, so this is what keeps the client's idea of
the HTTP API (paths, bodies, status codes, error shapes) and the agents' in step.
"""

from __future__ import annotations

import pytest
from ansible_collections.helexa.cortex.plugins.module_utils._api import (
    CortexApiError,
    GatewayClient,
    NeuronClient,
)

from cortex.testing.served import Served
from cortex.testing.waiting import wait_for


@pytest.fixture
def client(neuron):
    return NeuronClient(neuron.url, token=neuron.token, timeout=60)


def test_health_and_version_need_no_token(neuron):
    anon = NeuronClient(neuron.url)
    health = anon.health()
    assert health["status"] == "ok"
    assert health["drained"] is False
    assert health["activation"]["state"]
    assert isinstance(health["models"], list) and isinstance(health["devices"], list)
    assert "version" in anon.version()


def test_other_routes_want_the_bearer_token(neuron):
    with pytest.raises(CortexApiError) as e:
        NeuronClient(neuron.url).models()
    assert e.value.status == 401
    assert e.value.kind == "invalid_api_key"
    with pytest.raises(CortexApiError) as e:
        NeuronClient(neuron.url, token="wrong").discovery()
    assert e.value.status == 401


def test_discovery(client):
    d = client.discovery()
    for key in ("hostname", "devices", "gpu_count", "harnesses", "version"):
        assert key in d
    assert d["devices"] and "index" in d["devices"][0]


def test_models_lists_available_files(client):
    models = {m["id"]: m for m in client.models()}
    assert models["file:tiny-hello"]["status"] == "available"
    assert models["file:tiny-quants"]["status"] == "available"
    assert client.loaded_models() == {}


def test_load_unload_cycle(client):
    r = client.load("file:tiny-hello")
    assert r["status"] == "loaded" and r["model_id"] == "file:tiny-hello"
    assert r["already_loaded"] is False
    assert r["model"]["status"] == "loaded" and r["model"]["devices"]
    assert client.load("file:tiny-hello")["already_loaded"] is True
    assert set(client.loaded_models()) == {"file:tiny-hello"}
    health_models = {m["id"]: m for m in client.health()["models"]}
    assert {"in_flight", "queue_depth", "last_used"} <= set(health_models["file:tiny-hello"])
    assert client.unload("file:tiny-hello")["model_id"] == "file:tiny-hello"
    assert client.loaded_models() == {}
    with pytest.raises(CortexApiError) as e:
        client.unload("file:tiny-hello")
    assert e.value.status == 404
    assert e.value.kind == "model_not_found"


def test_load_a_quant(client):
    r = client.load("file:tiny-quants", quant="Q8_0")
    assert r["model"]["quant"] == "Q8_0"
    assert client.loaded_models()["file:tiny-quants"]["quant"] == "Q8_0"


def test_preflight_rejection_carries_kind_and_nearest(client):
    with pytest.raises(CortexApiError) as e:
        client.load("file:tiny-quants", quant="q80")
    err = e.value
    assert err.status == 422
    assert err.kind == "quant_not_found"
    assert err.error["nearest"] == "Q8_0"
    assert err.to_result()["nearest"] == "Q8_0"
    assert "quant_not_found" in str(err) and "Q8_0" in str(err)
    with pytest.raises(CortexApiError) as e:
        client.load("file:nope")
    assert e.value.status == 422 and e.value.kind == "source_not_found"


def test_missing_device_is_503(client):
    with pytest.raises(CortexApiError) as e:
        client.load("file:tiny-hello", devices=[97])
    assert e.value.status == 503 and e.value.kind == "device_unavailable"


def test_unreachable_has_no_status():
    with pytest.raises(CortexApiError) as e:
        NeuronClient("http://127.0.0.1:9", timeout=2).health()
    assert e.value.status is None
    assert "127.0.0.1:9" in str(e.value)


def test_gateway_contract(neuron, gateway):
    NeuronClient(neuron.url, token=neuron.token).load("file:tiny-hello")
    gw = GatewayClient(gateway.url, token=gateway.token)
    health = gw.health()
    assert health["nodes"]["total"] == 1
    assert isinstance(gw.models(), list)
    wait_for(lambda: any(m["id"] == "file:tiny-hello"
                         for m in (gw.node("n1") or {}).get("models", [])), "the load seen", 10)
    node = gw.node("n1")
    assert node["healthy"] is True and node["drained"] is False
    assert {"in_flight", "queue_depth"} <= set(node["models"][0])
    assert gw.node("nope") is None

    r = gw.drain("n1")
    assert r == {"node": "n1", "drained": True, "in_flight": 0}
    assert gw.node("n1")["drained"] is True
    assert NeuronClient(neuron.url).health()["drained"] is True
    assert gw.undrain("n1")["drained"] is False

    with pytest.raises(CortexApiError) as e:
        GatewayClient(gateway.url, token="not-admin").nodes()
    assert e.value.status == 401
    with pytest.raises(CortexApiError) as e:
        gw.drain("nope")
    assert e.value.status == 404 and e.value.kind == "node_not_found"


def test_a_token_never_follows_a_redirect(neuron):
    """A server that redirects (a proxy, or one that wants the token) gets no second request
    from the client; the error names where it was sent."""
    from flask import Flask, redirect, request  # the agents' web stack (cortex.testing)

    seen = []
    app = Flask("redirector")

    @app.route("/models")
    def models():
        return redirect(neuron.url + "/models", code=307)

    @app.route("/health")
    def health():
        seen.append(request.headers.get("Authorization"))
        return redirect(neuron.url + "/health", code=302)

    server = Served(app)
    url = server.url
    try:
        with pytest.raises(CortexApiError) as e:
            NeuronClient(url, token=neuron.token).models()
        assert e.value.status == 307
        assert "redirected (HTTP 307) to " + neuron.url + "/models" in e.value.message
        # without a token a redirect is followed as before (to the real neuron here)
        assert NeuronClient(url).health()["status"] == "ok"
        assert seen == [None]
    finally:
        server.close()
