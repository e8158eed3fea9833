"""API keys, caps (rolling and balance) in both stores, header stamping toward neurons."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from openai import AuthenticationError, OpenAI, RateLimitError

from cortex.gateway.config import (
    EntitlementsSection,
    GatewaySection,
    KeyEntry,
    ModelEntry,
    Window,
)
from cortex.testing.waiting import wait_for

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


def test_rolling_cap_is_429_with_retry_after(neuron_hello, gateway_factory, store_spec):
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")],
                         entitlements=keys(store_spec, hard_cap=30,
                                           window=Window(kind="rolling", seconds=600)))
    client = OpenAI(base_url=gw.url + "/v1", api_key="sk-capped", max_retries=0)
    spent = []
    with pytest.raises(RateLimitError) as exc:
        for _ in range(10):
            r = client.chat.completions.create(model="tiny-hello", messages=MSG)
            spent.append((r.usage.prompt_tokens, r.usage.completion_tokens))
    assert spent and sum(map(sum, spent)) <= 30  # refused before the cap, never past it
    assert exc.value.body["code"] == "rate_limit_exceeded"
    assert 0 < int(exc.value.response.headers["Retry-After"]) <= 601  # 1 s buckets
    # Another key of the same account has no cap.
    free = OpenAI(base_url=gw.url + "/v1", api_key="sk-free")
    assert free.chat.completions.create(model="tiny-hello", messages=MSG).choices


def test_a_finished_request_holds_only_what_it_spent(neuron_hello, gateway_factory, tmp_path):
    # A non-streaming reply's spend is stored after the reply is on the wire, so a client's
    # next request (a new connection, a slow store) can come first. It once met the first
    # request's whole reservation (256 tokens without max_tokens): a 429 well under the cap.
    # (A stream's spend is stored before its last bytes go out: no such race.)
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")],
                         entitlements=keys(f"sqlite://{tmp_path}/s.db", hard_cap=100,
                                           window=Window(kind="rolling", seconds=600)))
    store = gw.gw.auth.store
    settle, stored = store.settle, []

    def slow_settle(key_id, hold_id, tokens, *args, **kw):
        time.sleep(0.5)  # a store across the network, busy
        settle(key_id, hold_id, tokens, *args, **kw)
        stored.append(tokens)

    store.settle = slow_settle
    body = {"model": "tiny-hello", "messages": MSG}
    h = {"Authorization": "Bearer sk-capped", "Connection": "close"}
    spent = 0
    for _ in range(2):  # the second comes while the first one's spend is being stored
        r = requests.post(gw.url + "/v1/chat/completions", json=body, headers=h, timeout=30)
        assert r.status_code == 200, r.text
        spent += r.json()["usage"]["total_tokens"]
        assert 0 < gw.gw.auth.held("capped") <= spent  # what was spent, not a reservation
    wait_for(lambda: len(stored) == 2 and gw.gw.auth.held("capped") == 0, "the spend stored")


def test_balance_cap_is_insufficient_quota(neuron_hello, gateway_factory, tmp_path):
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")],
                         entitlements=keys(f"sqlite://{tmp_path}/s.db", hard_cap=30))
    h = {"Authorization": "Bearer sk-capped"}
    assert gw.post("/v1/chat/completions", {"model": "tiny-hello", "messages": MSG},
                   headers=h).status_code == 200
    r = gw.post("/v1/chat/completions", {"model": "tiny-hello", "messages": MSG}, headers=h)
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"

    def spent() -> bool:  # (the bill is settled as the server closes the reply: just after)
        gw.gw.metrics.flush()  # (collected through the registry, a flush comes first)
        return any(s.labels == {"account": "acme", "key": "capped"} and s.value > 0
                   for s in gw.gw.metrics.spend.collect()[0].samples)

    wait_for(spent, "the first request's spend counted", 10)


def test_headers_stamped_and_spoofs_stripped(neuron_factory, gateway_factory, tmp_path):
    # The neuron's per-account cap sees the gateway's stamp, not what the client claims.
    from cortex.neuron.config import AdmissionConfig

    n = neuron_factory(n_ctx=65536, admission=AdmissionConfig(max_per_principal=1))
    n.load("file:tiny-long")
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-long")],
                         entitlements=keys(f"sqlite://{tmp_path}/s.db"))
    import threading

    def long_call():
        gw.post("/v1/chat/completions", {"model": "tiny-long", "messages": MSG,
                                         "max_tokens": 60000},
                headers={"Authorization": "Bearer sk-free"})

    t = threading.Thread(target=long_call)
    t.start()
    worker = n.neuron.registry.models["file:tiny-long"].scheduler
    wait_for(lambda: worker.in_flight, "the long call running", 20)
    r = gw.post("/v1/chat/completions", {"model": "tiny-long", "messages": MSG, "max_tokens": 1},
                headers={"Authorization": "Bearer sk-free", "X-Helexa-Account-Id": "someone"})
    assert r.status_code == 429  # still account "acme": the spoofed header was dropped
    n.post("/models/unload", {"model_id": "file:tiny-long"})
    t.join()


def test_an_account_at_a_replicas_limit_goes_to_another(neuron_factory, gateway_factory,
                                                        tmp_path):
    # max_per_principal is each replica's: a 429 for it passes the request on, as a full
    # replica's 503 does; the client hears it only when every replica said so.
    from cortex.neuron.config import AdmissionConfig

    one_each = AdmissionConfig(max_per_principal=1)
    ns = {f"n{i}": neuron_factory(n_ctx=65536, admission=one_each) for i in (1, 2)}
    for n in ns.values():
        n.load("file:tiny-long")
    gw = gateway_factory(ns, [ModelEntry(id="tiny-long")], poll_interval_secs=3600,
                         entitlements=keys(f"sqlite://{tmp_path}/s.db"))
    headers = {"Authorization": "Bearer sk-free", "X-Claude-Code-Session-Id": "s1"}

    def call() -> requests.Response:
        return gw.post("/v1/chat/completions", {"model": "tiny-long", "messages": MSG,
                                                "max_tokens": 1}, headers=headers)

    home = call().headers["X-Cortex-Node"]  # where session s1 now lives
    other = ({"n1", "n2"} - {home}).pop()

    def hold(name: str) -> threading.Thread:
        """A long request of account acme on `name`, sent to it past the gateway."""
        n = ns[name]
        t = threading.Thread(target=n.post, args=("/v1/chat/completions", {
            "model": "file:tiny-long", "messages": MSG, "max_tokens": 60000}),
            kwargs={"headers": {"X-Helexa-Account-Id": "acme"}})
        t.start()
        scheduler = n.neuron.registry.models["file:tiny-long"].scheduler
        wait_for(lambda: scheduler.in_flight == 1, f"acme's long request on {name}", 20)
        return t

    held = [hold(home)]
    r = call()  # s1's home refuses acme (429): the other replica answers
    assert r.status_code == 200 and r.headers["X-Cortex-Node"] == other
    assert gw.gw.metrics.worker_routing.get("spill") == 1
    held.append(hold(other))
    r = call()  # both hold acme's one: the client hears the limit
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert "max_per_principal" in r.json()["error"]["message"]
    assert r.headers["Retry-After"]
    for n in ns.values():
        n.post("/models/unload", {"model_id": "file:tiny-long"})
    for t in held:
        t.join()


def test_neuron_token_on_every_call(neuron_factory, gateway_factory):
    n = neuron_factory(auth_token="nt0k")
    gw_wrong = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")])
    assert not gw_wrong.gw.fleet.nodes["n1"].healthy  # polls are refused without the token
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")], neuron_token="nt0k")
    assert gw.gw.fleet.nodes["n1"].healthy
    assert gw.chat("tiny-hello").status_code == 200


def test_empty_admin_key_is_refused_and_never_opens_admin_routes(neuron_hello,
                                                                 gateway_factory):
    # An empty vault value once made admin_keys = [""], which matched a request with no key.
    with pytest.raises(ValueError, match=r"admin_keys\[1\] is empty"):
        GatewaySection(admin_keys=["adm", " "])
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")],
                         admin_keys=["adm"])
    gw.gw.auth.admin_keys = [""]  # however it got there, an empty key matches nobody
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer  "}):
        r = gw.post("/admin/nodes/n1/drain", headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_api_key"
    assert not gw.gw.fleet.nodes["n1"].drained


def test_empty_client_key_is_refused():
    with pytest.raises(ValueError, match="key is empty"):
        KeyEntry(key="", account_id="acme")
    with pytest.raises(ValueError, match="key is empty"):
        KeyEntry(key="\t ", account_id="acme")


def test_unknown_key_is_401_even_without_require_auth(neuron_hello, gateway_factory,
                                                      tmp_path):
    # A typo or a revoked key must not pass as anonymous (uncapped, unattributed).
    ent = keys(f"sqlite://{tmp_path}/s.db")
    ent.require_auth = False
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")], entitlements=ent)
    with pytest.raises(AuthenticationError) as exc:
        OpenAI(base_url=gw.url + "/v1", api_key="sk-revoked", max_retries=0
               ).chat.completions.create(model="tiny-hello", messages=MSG)
    assert exc.value.body["code"] == "invalid_api_key"
    assert "sk-revoked" not in exc.value.response.text
    body = {"model": "tiny-hello", "messages": MSG, "max_tokens": 4}
    assert gw.post("/v1/messages", body, headers={"x-api-key": "sk-revoked"}).status_code == 401
    assert gw.post("/v1/chat/completions", body).status_code == 200  # no key: anonymous
    ok = OpenAI(base_url=gw.url + "/v1", api_key="sk-free").chat.completions.create(
        model="tiny-hello", messages=MSG)
    assert ok.choices[0].message.content


def test_week_long_rolling_window_caps(neuron_hello, gateway_factory, store_spec):
    # seconds = 604800 once made every request with the key a 500 (ValueError in the store).
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")],
                         entitlements=keys(store_spec, hard_cap=30,
                                           window=Window(kind="rolling", seconds=604800)))
    h = {"Authorization": "Bearer sk-capped"}
    body = {"model": "tiny-hello", "messages": MSG}
    r = gw.post("/v1/chat/completions", body, headers=h)
    assert r.status_code == 200, r.text
    # A reply is accounted once it is on the wire: until then its hold still counts.
    wait_for(lambda: gw.gw.auth.held("capped") == 0, "the request's hold to settle")
    r = gw.post("/v1/chat/completions", body, headers=h)  # 26 of 30 spent: too few left
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    # The spend leaves the window a week (one hour bucket at most) from now.
    assert 604800 - 60 < int(r.headers["Retry-After"]) <= 604800 + 3600


@pytest.mark.parametrize("seconds", [0, -5, 400 * 86400])
def test_rolling_window_bounds(seconds):
    with pytest.raises(ValueError, match="0 < seconds <="):
        Window(kind="rolling", seconds=seconds)


@pytest.mark.parametrize("raw, code", [
    ('{"model": "tiny-hello", "messages": [{"role": "user", "content": "Hi"}], '
     '"temperature": NaN}', "malformed_json"),
    ('{"model": "tiny-hello", "messages": [{"role": "user", "content": "Hi"}], '
     '"temperature": 1e400}', "malformed_json"),
    ('{"model": "tiny-hello", "messages": [{"role": "user", "content": "\\udc80"}]}',
     "malformed_json"),
    ('{"model": "tiny-hello", "messages": ' + "[" * 3000 + "]" * 3000 + "}",
     "invalid_request_body"),
])
def test_gateway_refuses_what_json_should_not_hold(neuron_hello, gateway_factory, raw, code):
    # Refused before routing: no neuron sees it, nothing is retried elsewhere.
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")])
    for path in ("/v1/chat/completions", "/v1/messages"):
        r = gw.http.post(gw.url + path, data=raw, headers={"Content-Type": "application/json"},
                         timeout=30)
        assert r.status_code == 400, r.text
        e = r.json()["error"]  # Anthropic's envelope has a type, no code
        assert e.get("code", code) == code and e["message"]
