"""The dashboard's bookkeeping: fleet rates from the neurons' totals, the recent list."""

from __future__ import annotations

from cortex.gateway.fleet import ModelOnNode, Node
from cortex.gateway.recent import Finished, RecentRequests
from cortex.gateway.ui.views import Rates


def node(name: str, polled_at: float, **totals: tuple[int, int]) -> Node:
    n = Node(name, f"http://{name}", healthy=True, last_ok=polled_at)
    for mid, (reqs, toks) in totals.items():
        n.models[mid] = ModelOnNode(mid, "loaded", info={"requests_total": reqs,
                                                         "completion_tokens_total": toks})
    return n


def test_rates_are_the_change_between_polls_summed_over_nodes():
    rates = Rates()
    assert rates.sample([node("a", 10.0, m=(5, 50)), node("b", 10.0, m=(1, 10))]) == {}
    # a: +4 requests, +40 tokens in 2 s; b: +2, +30 in 2 s.
    out = rates.sample([node("a", 12.0, m=(9, 90)), node("b", 12.0, m=(3, 40))])
    assert out == {"m": {"rps": 3.0, "tps": 35.0}}
    # No new poll of either node: the last rates hold (not a drop to zero, not a double).
    assert rates.sample([node("a", 12.0, m=(9, 90)), node("b", 12.0, m=(3, 40))]) == out
    # A neuron restarted (its totals went back): no negative rate.
    out = rates.sample([node("a", 13.0, m=(0, 0)), node("b", 13.0, m=(3, 40))])
    assert out == {"m": {"rps": 0.0, "tps": 0.0}}
    # Unloaded from a: only b's rate is left, under the name the page shows.
    out = rates.sample([node("a", 14.0), node("b", 15.0, m=(7, 80))],
                       name=lambda mid: f"public-{mid}")
    assert out == {"public-m": {"rps": 2.0, "tps": 20.0}}


def test_recent_requests_keep_the_newest_and_never_a_key():
    recent = RecentRequests(size=3)
    heard = []
    recent.listeners.append(heard.append)
    for i in range(5):
        recent.record(Finished(model="tiny", node="n1", key_id="key-id-1", status=200, code="",
                               prompt_tokens=10, completion_tokens=i + 1, started=100.0,
                               first_chunk_at=100.5, ended=101.5))
    items = recent.items()
    assert [x["completion_tokens"] for x in items] == [5, 4, 3]  # newest first, 3 kept
    assert items[0]["ttft_ms"] == 500.0 and items[0]["tok_s"] == 5.0
    assert items[0]["duration_ms"] == 1500.0 and items[0]["key_id"] == "key-id-1"
    assert len(heard) == 5 and heard[-1] == items[0]  # the live stream hears each one
    assert set(items[0]) == {"seq", "at", "model", "node", "key_id", "status", "code",
                             "ttft_ms", "duration_ms", "prompt_tokens", "completion_tokens",
                             "tok_s"}
