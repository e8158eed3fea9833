"""API keys, caps (rolling and balance) in both stores, header stamping toward neurons."""

from __future__ import annotations

import pytest
from openai import AuthenticationError, OpenAI, RateLimitError

from cortex.gateway.config import EntitlementsSection, KeyEntry, ModelEntry, Window

MSG = [{"role": "user", "content": "Hi"}]


def keys(store: str, **cap) -> EntitlementsSection:
    return EntitlementsSection(require_auth=True, store=store, keys=[
        KeyEntry(key="sk-free", account_id="acme"),
        KeyEntry(key="sk-capped", account_id="acme", key_id="capped", **cap)])


@pytest.fixture
def neuron_hello(neuron_factory):
    n = neuron_factory()
    n.load("file:tiny-hello")
    return n


def test_require_auth(neuron_hello, gateway_factory, tmp_path):
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")],
                         entitlements=keys(f"sqlite://{tmp_path}/s.db"))
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=gw.url + "/v1", api_key="sk-wrong").chat.completions.create(
            model="tiny-hello", messages=MSG)
    r = gw.chat("tiny-hello")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    ok = OpenAI(base_url=gw.url + "/v1", api_key="sk-free").chat.completions.create(
        model="tiny-hello", messages=MSG)
    assert ok.choices[0].message.content
    assert gw.get("/health").status_code == 200  # public
    assert gw.get("/").status_code == 200


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_rolling_cap_is_429_with_retry_after(neuron_hello, gateway_factory, tmp_path,
                                             store_kind, request):
    store = (f"sqlite://{tmp_path}/s.db" if store_kind == "sqlite"
             else request.getfixturevalue("redis_url"))
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")],
                         entitlements=keys(store, hard_cap=30,
                                           window=Window(kind="rolling", seconds=600)))
    client = OpenAI(base_url=gw.url + "/v1", api_key="sk-capped", max_retries=0)
    spent = 0
    while spent < 30:
        r = client.chat.completions.create(model="tiny-hello", messages=MSG)
        spent += r.usage.total_tokens
    with pytest.raises(RateLimitError) as exc:
        client.chat.completions.create(model="tiny-hello", messages=MSG)
    assert exc.value.body["code"] == "rate_limit_exceeded"
    assert 0 < int(exc.value.response.headers["Retry-After"]) <= 601  # 1 s buckets
    # Another key of the same account has no cap.
    free = OpenAI(base_url=gw.url + "/v1", api_key="sk-free")
    assert free.chat.completions.create(model="tiny-hello", messages=MSG).choices


def test_balance_cap_is_insufficient_quota(neuron_hello, gateway_factory, tmp_path):
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")],
                         entitlements=keys(f"sqlite://{tmp_path}/s.db", hard_cap=1))
    h = {"Authorization": "Bearer sk-capped"}
    assert gw.post("/v1/chat/completions", {"model": "tiny-hello", "messages": MSG},
                   headers=h).status_code == 200
    r = gw.post("/v1/chat/completions", {"model": "tiny-hello", "messages": MSG}, headers=h)
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    spend = gw.gw.metrics.spend.collect()[0].samples
    assert any(s.labels == {"account": "acme", "key": "capped"} and s.value > 0 for s in spend)


def test_headers_stamped_and_spoofs_stripped(neuron_factory, gateway_factory, tmp_path):
    # The neuron's per-account cap sees the gateway's stamp, not what the client claims.
    from cortex.neuron.config import AdmissionConfig

    n = neuron_factory(n_ctx=65536, admission=AdmissionConfig(max_per_principal=1))
    n.load("file:tiny-long")
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-long")],
                         entitlements=keys(f"sqlite://{tmp_path}/s.db"))
    import threading
    import time

    def long_call():
        gw.post("/v1/chat/completions", {"model": "tiny-long", "messages": MSG,
                                         "max_tokens": 60000},
                headers={"Authorization": "Bearer sk-free"})

    t = threading.Thread(target=long_call)
    t.start()
    worker = n.neuron.registry.models["file:tiny-long"].scheduler
    deadline = time.monotonic() + 20
    while worker.in_flight == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    r = gw.post("/v1/chat/completions", {"model": "tiny-long", "messages": MSG, "max_tokens": 1},
                headers={"Authorization": "Bearer sk-free", "X-Helexa-Account-Id": "someone"})
    assert r.status_code == 429  # still account "acme": the spoofed header was dropped
    n.post("/models/unload", {"model_id": "file:tiny-long"})
    t.join()


def test_neuron_token_on_every_call(neuron_factory, gateway_factory):
    n = neuron_factory(auth_token="nt0k")
    gw_wrong = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")])
    assert not gw_wrong.gw.fleet.nodes["n1"].healthy  # polls are refused without the token
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")], neuron_token="nt0k")
    assert gw.gw.fleet.nodes["n1"].healthy
    assert gw.chat("tiny-hello").status_code == 200
