"""What costs a gateway or a neuron work but spends no tokens is bounded too: dashboard
event streams (per worker and per key) and token counting (per key, through the store)."""

from __future__ import annotations

import contextlib

import anthropic
import pytest
import requests

from cortex.gateway.config import EntitlementsSection, KeyEntry, ModelEntry
from cortex.testing.waiting import wait_for

ADMIN = "sk-admin"
MSG = [{"role": "user", "content": "Hi"}]


def keyed(store: str = "", **options) -> EntitlementsSection:
    return EntitlementsSection(require_auth=True, store=store, keys=[
        KeyEntry(key=f"sk-{k}", account_id="acme", key_id=k) for k in "abc"], **options)


@pytest.fixture
def hello(neuron_factory):
    n = neuron_factory()
    n.load("file:tiny-hello")
    return n


def test_dashboard_streams_are_bounded_per_key_and_per_worker(hello, gateway_factory):
    # Before: any number of /ui/events streams, each a greenlet and a queue, for free.
    gw = gateway_factory({"n1": hello}, [ModelEntry(id="tiny-hello")], entitlements=keyed(),
                         admin_keys=[ADMIN], ui_max_streams=3, ui_max_streams_per_key=2)

    def watch(key: str) -> requests.Response:
        return requests.get(gw.url + "/ui/events", stream=True, timeout=30,
                            headers={"Authorization": f"Bearer {key}"})

    with contextlib.ExitStack() as open_:
        a1, a2 = (open_.enter_context(watch("sk-a")) for _ in range(2))
        assert a1.status_code == a2.status_code == 200
        a3 = watch("sk-a")  # a third for one key
        assert a3.status_code == 429 and a3.json()["error"]["code"] == "too_many_streams"
        assert int(a3.headers["Retry-After"]) > 0
        assert open_.enter_context(watch("sk-b")).status_code == 200
        assert watch("sk-c").status_code == 429  # the worker holds its 3
        assert open_.enter_context(watch(ADMIN)).status_code == 200  # an admin still can
        a1.close()  # a page closed: its place is free again, once the worker notices
        live = gw.app.extensions["cortex_ui"]  # (at the stream's next write: a tick)
        wait_for(lambda: live.watchers == 3, "the closed stream to be dropped", 30)
        assert open_.enter_context(watch("sk-c")).status_code == 200


def test_token_counting_is_rate_limited_per_key_on_every_gateway(hello, gateway_factory,
                                                                  store_spec):
    # Before: /v1/messages/count_tokens and /v1/responses/input_tokens rendered and
    # tokenized bodies up to the size limit, as often as anyone asked, for nothing.
    ents = keyed(store_spec, count_requests_per_minute=3)
    gw1 = gateway_factory({"n1": hello}, [ModelEntry(id="tiny-hello")], entitlements=ents)
    gw2 = gateway_factory({"n1": hello}, [ModelEntry(id="tiny-hello")], entitlements=ents)
    a1 = anthropic.Anthropic(base_url=gw1.url, api_key="sk-a", max_retries=0)
    assert a1.messages.count_tokens(model="tiny-hello", messages=MSG).input_tokens > 0
    assert a1.messages.count_tokens(model="tiny-hello", messages=MSG).input_tokens > 0
    r = gw2.post("/v1/responses/input_tokens", {"model": "tiny-hello", "input": "Hi"},
                 headers={"Authorization": "Bearer sk-a"})
    assert r.status_code == 200, r.text  # the third this minute, on another gateway
    with pytest.raises(anthropic.RateLimitError) as exc:
        anthropic.Anthropic(base_url=gw2.url, api_key="sk-a", max_retries=0) \
            .messages.count_tokens(model="tiny-hello", messages=MSG)
    assert 0 < int(exc.value.response.headers["Retry-After"]) <= 60
    r = gw1.post("/v1/responses/input_tokens", {"model": "tiny-hello", "input": "Hi"},
                 headers={"Authorization": "Bearer sk-a"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    # Another key has its own count, and inference is not limited by it.
    b = anthropic.Anthropic(base_url=gw1.url, api_key="sk-b", max_retries=0)
    assert b.messages.count_tokens(model="tiny-hello", messages=MSG).input_tokens > 0
    assert a1.messages.create(model="tiny-hello", max_tokens=8, messages=MSG).content
