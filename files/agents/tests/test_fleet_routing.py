"""Sessions stick to a replica, across gateway workers; spill when their replica is much
busier; move only when it goes, and come back with it. `cortex serve` (gunicorn, 2 gevent
workers) over neuron stand-ins that report their load on cue (cortex.testing.standin).

The placement rules themselves are tables in test_affinity.py; here is the wiring: the
gateway reads the session keys clients send, every worker agrees on where a session lives,
and Prometheus counts why each request went where it did, and the cache hits.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from cortex.gateway.affinity import rendezvous
from cortex.testing.processes import metric
from cortex.testing.waiting import wait_for

M = "file:m"
CHAT = "/v1/chat/completions"
DATA = Path(__file__).parent / "data"
MODELS = {"models": [{"id": "m"}]}


@pytest.fixture
def three(standin_factory):
    """Three stand-ins with m loaded (2 slots, a queue of 4: full at 6)."""
    return {f"n{i}": standin_factory((M,), slots=2, max_queue_depth=4, cached_tokens=3)
            for i in (1, 2, 3)}


def chat(gw, session: str | None = None, turns: int = 1, first: str = "task",
         headers: dict | None = None) -> requests.Response:
    msgs = [{"role": "system", "content": "You are an agent."},
            {"role": "user", "content": first}]
    for i in range(turns - 1):
        msgs += [{"role": "assistant", "content": f"step {i}"},
                 {"role": "user", "content": f"tool output {i}"}]
    h = dict(headers or {})
    if session:
        h["x-claude-code-session-id"] = session
    return requests.post(gw.url + "/v1/chat/completions", json={"model": "m",
                         "messages": msgs}, headers=h, timeout=30)


def routed(gw, **at_least: int) -> str:
    """Until cortex_routing_total counts at least that many of each reason (workers add
    their counts to the metrics once a second); the metrics text."""
    def counted() -> str:
        text = gw.metrics()
        return text if all(metric(text, "cortex_routing_total", model="m", reason=r) >= n
                           for r, n in at_least.items()) else ""

    return wait_for(counted, f"the routing counts {at_least}", timeout=10)


def node_of(r: requests.Response) -> str:
    assert r.status_code == 200, r.text
    return r.headers["X-Cortex-Node"]


def test_a_sessions_turns_stay_on_one_node_whichever_worker_takes_them(three,
                                                                       gateway_process):
    gw = gateway_process(three, MODELS, workers=2)
    homes = {}
    for s in (f"session-{i}" for i in range(12)):
        # Each turn on a new connection: gunicorn hands them to either worker.
        nodes = {node_of(chat(gw, s, turns=t)) for t in range(1, 7)}
        assert len(nodes) == 1, (s, nodes)
        homes[s] = nodes.pop()
    assert len(set(homes.values())) >= 2  # sessions spread over the replicas


def test_a_conversation_without_a_session_key_sticks_by_its_prefix(three, gateway_process):
    gw = gateway_process(three, MODELS, workers=2)
    for first in ("fix the parser", "write the docs", "add a test", "rename a module"):
        nodes = {node_of(chat(gw, None, turns=t, first=first)) for t in range(1, 6)}
        assert len(nodes) == 1, (first, nodes)


def test_two_gateways_agree_on_every_sessions_home_without_sharing_anything(
        three, gateway_process):
    gws = [gateway_process(three, MODELS, workers=2) for _ in range(2)]
    for s in (f"session-{i}" for i in range(10)):
        # Turns alternate between two gateway processes (of two workers each).
        nodes = {node_of(chat(gws[t % 2], s, turns=t)) for t in range(1, 7)}
        assert len(nodes) == 1, (s, nodes)


def held(stand_ins: dict, send, count: int) -> Counter:
    """Send `count` requests at once (`send(i)`) while the stand-ins hold every request
    they get: which node each landed on, once all have arrived (then they are let go)."""
    for n in stand_ins.values():
        n.gate.clear()
    with ThreadPoolExecutor(count) as pool:
        replies = [pool.submit(send, i) for i in range(count)]
        try:
            wait_for(lambda: sum(len(n.hits(CHAT)) for n in stand_ins.values()) == count,
                     f"{count} requests at the stand-ins", timeout=20)
            landed = Counter({name: len(n.hits(CHAT)) for name, n in stand_ins.items()})
        finally:
            for n in stand_ins.values():
                n.gate.set()
        for r in replies:
            node_of(r.result())
    return landed


def test_a_burst_does_not_herd_onto_one_replica(three, gateway_process):
    gw = gateway_process(three, MODELS, workers=1)
    # Twelve sessions' turns at the same moment: their homes, bounded by load (a replica
    # a whole batch, 2 slots, busier than the least busy one gives the next request away).
    landed = held(three, lambda i: chat(gw, f"burst-{i}"), 12)
    assert max(landed.values()) - min(landed.values()) <= 3, landed
    for n in three.values():
        n.received.clear()
    # One session's eight requests at once (an agent's parallel calls): its home takes
    # them until it is a batch busier than the least busy, then they spill.
    landed = held(three, lambda i: chat(gw, "one-session"), 8)
    assert max(landed.values()) <= 4 and len(+landed) >= 2, landed


FRESH = itertools.count()


def polled(node, workers: int) -> None:
    """Until every gateway worker has polled `node` since now: `workers` polls each, two
    rounds (the workers poll at the same interval; one may have just begun a round)."""
    start = node.polls
    wait_for(lambda: node.polls >= start + 2 * workers, "a poll by every worker")


def new_sessions_land(gw, node: str, nodes: dict, count: int = 4) -> bool:
    """Whether `count` sessions never seen before, whose first choice is `node`, all land
    there, each on a new connection (either worker)."""
    fresh = (f"new-{next(FRESH)}" for _ in itertools.count())
    wins = [s for s in itertools.islice(
        (s for s in fresh if rendezvous(f"h:{s}", nodes)[0] == node), count)]
    return all(node_of(chat(gw, s)) == node for s in wins)


def test_a_replica_added_takes_new_sessions_and_moves_none(standin_factory,
                                                          gateway_process):
    nodes = {f"n{i}": standin_factory((M,), slots=2, max_queue_depth=4, loaded=i < 4)
             for i in (1, 2, 3, 4)}
    gw = gateway_process(nodes, MODELS, workers=2)
    sessions = [f"s-{i}" for i in range(30)]
    before = {s: node_of(chat(gw, s)) for s in sessions}
    assert "n4" not in before.values()
    nodes["n4"].loaded[M] = True  # (as `cortex load m --node n4` or the scaler would)
    # New sessions whose first choice is n4 go there, on either worker, once it polled n4.
    wait_for(lambda: new_sessions_land(gw, "n4", nodes), "new sessions on n4", timeout=20)
    # No session there before moved, though about a quarter of them now hash to n4 first
    # (their prompts are cached where they are: moving them would lose that).
    assert {s for s in sessions if rendezvous(f"h:{s}", nodes)[0] == "n4"}
    for turns in (2, 3):
        assert {s: node_of(chat(gw, s, turns=turns)) for s in sessions} == before


def test_recorded_claude_code_and_codex_bodies_keep_to_their_session(three,
                                                                     gateway_process):
    """The recorded requests as the clients sent them (headers and bodies), a second turn
    appended: each session's turns on one node, counted as affinity."""
    gw = gateway_process(three, MODELS, workers=2)
    skip = {"host", "content-length", "x-api-key", "authorization", "accept-encoding",
            "connection"}
    for name, path, turn in (
            ("claude_code_2.1.197", "/v1/messages?beta=true", lambda b, i: b["messages"]
             .extend([{"role": "assistant", "content": f"done {i}"},
                      {"role": "user", "content": f"next {i}"}])),
            ("codex_responses", "/v1/responses", lambda b, i: b["input"]
             .extend([{"type": "message", "role": "assistant",
                       "content": [{"type": "output_text", "text": f"done {i}"}]},
                      {"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": f"next {i}"}]}]))):
        head = json.loads((DATA / f"{name}_headers.json").read_text())["headers"]
        headers = {k: v for k, v in head.items() if k.lower() not in skip}
        body = json.loads((DATA / f"{name}_request.json").read_text())
        body["model"] = "m"
        nodes = set()
        for i in range(3):
            r = requests.post(gw.url + path, json=body, headers=headers, timeout=30)
            nodes.add(node_of(r))
            body = copy.deepcopy(body)
            turn(body, i)
        assert len(nodes) == 1, (name, nodes)
    routed(gw, affinity=6)


def test_keys_in_the_body_keep_a_session_whatever_the_dialect(three, gateway_process):
    """Responses' prompt_cache_key and user, Anthropic's metadata.user_id; no header, and
    a first message that differs every turn: only the key is shared."""
    gw = gateway_process(three, MODELS, workers=2)

    def responses(key: str, value: str, text: str) -> str:
        return node_of(requests.post(gw.url + "/v1/responses", timeout=30, json={
            "model": "m", "input": text, key: value}))

    def messages(user_id: str, text: str) -> str:
        return node_of(requests.post(gw.url + "/v1/messages", timeout=30, json={
            "model": "m", "max_tokens": 8, "metadata": {"user_id": user_id},
            "messages": [{"role": "user", "content": text}]}))

    for i in range(4):
        by_cache_key, by_user = set(), set()
        for t in range(3):
            by_cache_key.add(responses("prompt_cache_key", f"k-{i}", f"turn {t} of {i}"))
            by_user.add(responses("user", f"u-{i}", f"turn {t} of {i}"))
            by_user.add(messages(f"u-{i}", f"turn {t} of {i}"))  # the same user: one home
        assert len(by_cache_key) == 1 and len(by_user) == 1, (by_cache_key, by_user)
    routed(gw, affinity=36)


def test_recorded_claude_code_and_codex_turns_keep_to_their_session(three, gateway_process):
    gw = gateway_process(three, MODELS, workers=2)
    for name in ("claude_code_2.1.197", "codex_responses"):
        head = json.loads((DATA / f"{name}_headers.json").read_text())["headers"]
        session = head.get("X-Claude-Code-Session-Id") or head["session-id"]
        key = ("x-claude-code-session-id" if "X-Claude-Code-Session-Id" in head
               else "session-id")
        nodes = {node_of(chat(gw, None, turns=t, first=f"turn {t}", headers={key: session}))
                 for t in range(1, 5)}
        assert len(nodes) == 1, (name, nodes)


def test_a_much_busier_home_spills_and_the_session_stays_where_it_went(three,
                                                                        gateway_process):
    gw = gateway_process(three, MODELS, workers=2)
    home = node_of(chat(gw, "s-spill"))
    busy = three[home]
    busy.in_flight, busy.queue_depth = 2, 4  # full: its neuron would refuse
    went = wait_for(lambda: (n := node_of(chat(gw, "s-spill", turns=2))) != home and n,
                    "a spill", timeout=15)
    busy.in_flight, busy.queue_depth = 0, 0
    # Its prompt is cached where it went now: its next turns stay there, on either worker
    # (the one that did not send the spill learns it from that neuron's /health).
    polled(three[went], workers=2)
    for turns in range(3, 9):
        assert node_of(chat(gw, "s-spill", turns=turns)) == went
    routed(gw, spill=1, affinity=7)


def test_a_gateway_learns_where_another_moved_a_session(three, gateway_process):
    """A session spilled through one gateway: its next turn through another gateway, which
    never saw it, goes where it went, as that neuron reports (no state shared)."""
    a, b = (gateway_process(three, MODELS, workers=1) for _ in range(2))
    home = node_of(chat(a, "s-moved"))
    assert node_of(chat(b, "s-moved", turns=2)) == home
    three[home].in_flight, three[home].queue_depth = 2, 4
    went = wait_for(lambda: (n := node_of(chat(a, "s-moved", turns=3))) != home and n,
                    "a spill through gateway a", timeout=15)
    three[home].in_flight, three[home].queue_depth = 0, 0
    polled(three[went], workers=2)  # (one each)
    for gw in (b, a, b, a):
        assert node_of(chat(gw, "s-moved", turns=5)) == went


def test_a_node_that_goes_moves_only_its_sessions_and_they_stay_moved(three,
                                                                     gateway_process):
    gw = gateway_process(three, MODELS, workers=2, admin_keys=["adm"])
    sessions = [f"s-{i}" for i in range(24)]
    before = {s: node_of(chat(gw, s)) for s in sessions}
    gone = max(set(before.values()), key=list(before.values()).count)
    requests.post(f"{gw.url}/admin/nodes/{gone}/drain", timeout=10,
                  headers={"Authorization": "Bearer adm"}).raise_for_status()

    def moved() -> dict[str, str]:
        now = {s: node_of(chat(gw, s, turns=2)) for s in sessions}
        return now if gone not in now.values() else {}

    during = wait_for(moved, f"no session on {gone}", timeout=15)
    assert {s for s in sessions if during[s] != before[s]} == {
        s for s in sessions if before[s] == gone}  # only its own sessions moved
    for node in three.values():  # (every worker has heard where each session went)
        polled(node, workers=2)
    requests.post(f"{gw.url}/admin/nodes/{gone}/undrain", timeout=10,
                  headers={"Authorization": "Bearer adm"}).raise_for_status()
    # Back: it takes new sessions again, and the moved ones stay where their prompts are.
    wait_for(lambda: new_sessions_land(gw, gone, three), f"new sessions on {gone} again",
             timeout=15)
    assert {s: node_of(chat(gw, s, turns=3)) for s in sessions} == during


def test_routing_reasons_and_the_cache_hit_ratio_are_counted(three, gateway_process):
    gw = gateway_process(three, MODELS, workers=1, admin_keys=["adm"])
    for i in range(3):
        node_of(chat(gw, f"s-{i}"))  # affinity
        node_of(chat(gw, None, first=f"no key {i}"))  # prefix
    r = requests.post(gw.url + "/v1/embeddings", json={"model": "m", "input": "x"},
                      timeout=30)
    assert r.status_code == 200  # no session in an embedding: least_busy
    text = routed(gw, least_busy=1, affinity=3, prefix=3)
    assert metric(text, "cortex_routing_total", model="m", reason="affinity") == 3
    assert metric(text, "cortex_routing_total", model="m", reason="prefix") == 3
    assert metric(text, "cortex_routing_total", model="m", reason="least_busy") == 1
    assert metric(text, "cortex_prompt_cached_tokens_total", model="m") == 3 * 6
    # cortex top's view: the answering worker's counts (one worker here: all of them).
    view = requests.get(gw.url + "/admin/fleet", headers={"Authorization": "Bearer adm"},
                        timeout=10).json()
    assert view["routing"] == {"affinity": 3, "prefix": 3, "least_busy": 1}
    prompt = metric(text, "cortex_prompt_tokens_total", model="m")
    assert view["cache"] == {"prompt_tokens": prompt, "cached_tokens": 18,
                             "hit_ratio": round(18 / prompt, 4)}


def test_the_least_busy_policy_ignores_sessions(three, gateway_process):
    gw = gateway_process(three, MODELS, workers=1,
                         entitlements={"routing": {"policy": "least_busy"}})
    first = node_of(chat(gw, "one-session"))
    three[first].in_flight = 3  # as its neuron's next poll says
    wait_for(lambda: node_of(chat(gw, "one-session")) != first, "the next turn elsewhere",
             timeout=15)
    text = routed(gw, least_busy=2)
    assert all(metric(text, "cortex_routing_total", model="m", reason=r) == 0
               for r in ("affinity", "prefix"))
