"""Requests spread over a model's replicas and spill past a full one (issue 22, section 1).

Two neuron stand-ins with the model loaded, a real gateway over them: what each stand-in
received shows where the gateway sent each request, and the metrics port says which rule
placed it. The placement policy's own table is in test_router_policy.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from openai import OpenAI

from cortex.gateway.config import ModelEntry, RoutingSection
from cortex.testing.waiting import wait_for

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def pair(standin_factory, gateway_factory):
    """Stand-ins n1 and n2 with the model loaded, both idle by their last poll."""
    n1, n2 = standin_factory(), standin_factory()
    # least_busy: these tests' requests are one conversation, which affinity keeps on one
    # replica (test_fleet_routing.py); here the spread by this worker's own count is tested.
    gw = gateway_factory({"n1": n1, "n2": n2}, [ModelEntry(id="standin")],
                         routing=RoutingSection(policy="least_busy"))
    return gw, n1, n2


def counted(gw, name: str, **labels: str) -> float:
    gw.gw.metrics.flush()
    return gw.gw.metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_burst_spreads_over_the_replicas(pair):
    gw, n1, n2 = pair
    for n in (n1, n2):  # each holds what it receives until all four are in
        n.gate.clear()
    client = OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0, timeout=30)
    with ThreadPoolExecutor(4) as pool:
        replies = [pool.submit(client.chat.completions.create, model="standin",
                               messages=MSG) for _ in range(4)]
        wait_for(lambda: len(n1.hits(CHAT)) + len(n2.hits(CHAT)) == 4, "four requests in", 10)
        for n in (n1, n2):
            n.gate.set()
        assert all(r.result().choices[0].message.content == "Hello." for r in replies)
    # Both replicas were idle by the last poll: what the gateway had sent and not seen
    # finish told them apart, so the burst went 2 + 2 (not 4 + 0 to the first by name).
    assert (len(n1.hits(CHAT)), len(n2.hits(CHAT))) == (2, 2)
    assert counted(gw, "cortex_routing_total", model="standin", reason="least_busy") == 4
    # All finished: the count is back to the poll's (once a poll no longer sees the
    # requests the stand-ins held), and ties go by name again.
    wait_for(lambda: not any(m.busy for n in gw.gw.fleet.nodes.values()
                             for m in n.models.values()), "a poll with both idle", 10)
    assert gw.chat("standin").headers["X-Cortex-Node"] == "n1"


def test_a_full_replica_passes_the_request_on_before_the_first_byte(pair):
    gw, n1, n2 = pair
    n1.full = True  # the first choice (by name) refuses: its queue is full
    r = gw.chat("standin")
    assert r.status_code == 200 and r.headers["X-Cortex-Node"] == "n2"
    assert r.json()["choices"][0]["message"]["content"] == "Hello."
    assert len(n1.hits(CHAT)) == len(n2.hits(CHAT)) == 1  # refused there, served here
    assert counted(gw, "cortex_routing_total", model="standin", reason="spill") == 1
    # Streams too: the client hears nothing of the refusal.
    events = list(OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0).chat
                  .completions.create(model="standin", messages=MSG, stream=True))
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == "Hello."
    assert counted(gw, "cortex_routing_total", model="standin", reason="spill") == 2


@pytest.mark.parametrize("path, body", [
    (CHAT, {"messages": MSG}),
    (CHAT, {"messages": MSG, "stream": True}),
    ("/v1/messages", {"messages": MSG, "max_tokens": 8}),
    ("/v1/responses", {"input": "Hi"}),
])
def test_every_replica_full_is_a_503_with_retry_after(pair, path, body):
    gw, n1, n2 = pair
    n1.full = n2.full = True
    r = gw.post(path, {"model": "standin", **body}, headers={"x-api-key": "none"})
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "3"  # the neuron's own
    assert "busy" in r.text
    assert len(n1.hits(CHAT)) == len(n2.hits(CHAT)) == 1  # each tried once
    assert counted(gw, "cortex_replicas_full_total", model="standin") == 1
