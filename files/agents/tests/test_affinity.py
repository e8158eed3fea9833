"""Sessions stick to a replica: the affinity key and placement, as tables.

The recorded requests of Claude Code and Codex (tests/data, with the headers they sent)
are the test data for the key; placement is checked over plain replica loads. The wiring
(the router's reason counter, requests on real neurons) is in test_fleet_routing.py.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cortex.gateway.affinity import (
    AFFINITY,
    LEAST_BUSY,
    PREFIX,
    SPILL,
    Balance,
    Key,
    LastServed,
    Replica,
    affinity_key,
    order,
    place,
    prefix_digest,
    rendezvous,
)

DATA = Path(__file__).parent / "data"


def recorded(name: str) -> tuple[dict[str, str], dict]:
    """A recorded request: its headers as the data plane passes them (lower case), body."""
    head = json.loads((DATA / f"{name}_headers.json").read_text())["headers"]
    body = json.loads((DATA / f"{name}_request.json").read_text())
    return {k.lower(): v for k, v in head.items()}, body


CLAUDE_HEADERS, CLAUDE = recorded("claude_code_2.1.197")
CODEX_HEADERS, CODEX = recorded("codex_responses")
CLAUDE_SESSION = CLAUDE_HEADERS["x-claude-code-session-id"]
CODEX_SESSION = CODEX_HEADERS["session-id"]


def chat(*turns: str, system: str = "You are a coding agent. " * 50, tools: int = 3) -> dict:
    """An OpenAI chat body: a system prompt, tools, then user/assistant turns in turn."""
    msgs = [{"role": "system", "content": system}]
    msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
             for i, t in enumerate(turns)]
    return {"model": "m", "messages": msgs,
            "tools": [{"type": "function", "function": {"name": f"tool{i}",
                                                        "parameters": {"type": "object"}}}
                      for i in range(tools)]}


def without(body: dict, *keys: str) -> dict:
    return {k: v for k, v in body.items() if k not in keys}


# -- the key: the client's own session first ---------------------------------------------
KEYS = [
    ("Claude Code: its session header", CLAUDE_HEADERS, CLAUDE,
     Key(f"h:{CLAUDE_SESSION}", AFFINITY)),
    ("Claude Code without the header: metadata.user_id (which names the session)", {},
     CLAUDE, Key(f"u:{CLAUDE['metadata']['user_id']}", AFFINITY)),
    ("Codex: its session-id header", CODEX_HEADERS, CODEX,
     Key(f"h:{CODEX_SESSION}", AFFINITY)),
    ("Codex without headers: prompt_cache_key", {}, CODEX,
     Key(f"c:{CODEX['prompt_cache_key']}", AFFINITY)),
    ("session_id spelled with an underscore", {"session_id": "s1"}, chat("hi"),
     Key("h:s1", AFFINITY)),
    ("OpenCode: x-session-id", {"x-session-id": "oc-1"}, chat("hi"),
     Key("h:oc-1", AFFINITY)),
    ("the session header wins over the body's keys", {"x-session-id": "oc-1"},
     dict(chat("hi"), user="alice", prompt_cache_key="pk"), Key("h:oc-1", AFFINITY)),
    ("prompt_cache_key wins over user", {}, dict(chat("hi"), user="alice",
                                                 prompt_cache_key="pk"),
     Key("c:pk", AFFINITY)),
    ("OpenAI user", {}, dict(chat("hi"), user="alice"), Key("u:alice", AFFINITY)),
    ("an empty header is no key", {"x-session-id": ""}, dict(chat("hi"), user="alice"),
     Key("u:alice", AFFINITY)),
    ("a user that is not a string is no key", {}, dict(chat("hi"), user=7),
     Key(f"p:{prefix_digest(chat('hi'))}", PREFIX)),
    ("nothing from the client: the prefix", {}, chat("hi"),
     Key(f"p:{prefix_digest(chat('hi'))}", PREFIX)),
    ("no user message at all: no key", {}, {"model": "m", "messages": [
        {"role": "system", "content": "x"}]}, None),
    ("no prompt at all: no key", {}, {"model": "m"}, None),
]


@pytest.mark.parametrize("headers, body, expected", [row[1:] for row in KEYS],
                         ids=[row[0] for row in KEYS])
def test_affinity_key(headers, body, expected):
    assert affinity_key(headers, body) == expected


# -- the prefix: the same across a session's turns, apart between sessions ------------------
def prefix(body: dict) -> str:
    key = affinity_key({}, body)
    assert key is not None and key.reason == PREFIX
    return key.value


def test_a_sessions_turns_share_its_prefix_key():
    turn1 = chat("Fix the failing test in parser.py")
    turn2 = chat("Fix the failing test in parser.py", "Done: the off-by-one in line 40.",
                 "Now add a test for it")
    turn3 = chat(*[m["content"] for m in turn2["messages"][1:]], "ok", "and the docs")
    assert prefix(turn1) == prefix(turn2) == prefix(turn3)


def test_sessions_sharing_system_and_tools_part_at_their_first_user_message():
    a, b = chat("Fix the failing test in parser.py"), chat("Write a README")
    assert prefix(a) != prefix(b)


def test_a_difference_deep_in_a_long_body_still_tells_sessions_apart():
    # Agents share a long system + tools prefix (Claude Code's: ~80 KB): a key over the
    # body's first 16 KiB would put every session of an agent on one replica.
    long = "Follow these rules carefully. " * 4000  # 120 KB of shared system prompt
    a, b = chat("task one", system=long, tools=24), chat("task two", system=long, tools=24)
    assert len(json.dumps(a)) > 100_000
    assert prefix(a) != prefix(b)


def test_the_system_prompt_and_tools_are_part_of_the_prefix():
    assert prefix(chat("hi", system="A")) != prefix(chat("hi", system="B"))
    assert prefix(chat("hi", tools=2)) != prefix(chat("hi", tools=3))


def test_claude_codes_per_request_billing_line_does_not_change_the_key():
    # Its first system block names the CLI's build (cc_version=2.1.197.725) and changes on
    # every request; the rest of the prefix is the conversation.
    body = without(CLAUDE, "metadata")
    other = copy.deepcopy(body)
    other["system"][0]["text"] = other["system"][0]["text"].replace("725", "726")
    assert prefix(body) == prefix(other)
    other["system"][2]["text"] += " (edited)"
    assert prefix(body) != prefix(other)


def test_claude_code_and_codex_recorded_turns_keep_their_prefix_key_as_they_grow():
    claude = without(CLAUDE, "metadata")
    grown = copy.deepcopy(claude)
    grown["messages"] += [{"role": "assistant", "content": [{"type": "text",
                                                              "text": "Rome."}]},
                          {"role": "user", "content": "And of Spain?"}]
    assert prefix(claude) == prefix(grown)
    codex = without(CODEX, "prompt_cache_key")
    grown = copy.deepcopy(codex)
    grown["input"] += [{"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Paris."}]},
                       {"type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": "And of Italy?"}]}]
    assert prefix(codex) == prefix(grown)


def test_dialects_each_give_a_prefix_key():
    assert prefix({"model": "m", "input": "hello"})  # Responses, plain text
    assert prefix({"model": "m", "instructions": "be brief", "input": [
        {"role": "user", "content": "hi"}]})
    assert prefix({"model": "m", "prompt": "Once upon a time"})  # completions
    assert prefix({"model": "m", "system": "be brief", "messages": [
        {"role": "user", "content": "hi"}]})  # Anthropic, system as a string


def test_the_key_is_the_same_in_every_process():
    # Gateway workers and hosts agree without talking: nothing in the key or the order
    # depends on the process (Python's str hash is salted per process; blake2b is not).
    code = ("import json,sys; from cortex.gateway.affinity import affinity_key, rendezvous;"
            "b=json.load(sys.stdin); k=affinity_key({}, b).value;"
            "print(k, rendezvous(k, ['n1','n2','n3','n4']))")
    body = json.dumps(chat("Fix the failing test"))
    outs = {subprocess.run([sys.executable, "-c", code], input=body, text=True, check=True,
                           capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed}
                           ).stdout for seed in ("1", "2")}
    key = affinity_key({}, json.loads(body)).value
    assert outs == {f"{key} {rendezvous(key, ['n1', 'n2', 'n3', 'n4'])}\n"}


# -- rendezvous: who moves when replicas come and go ----------------------------------------
SESSIONS = [f"h:session-{i}" for i in range(6000)]


def homes(names: list[str]) -> dict[str, str]:
    return {s: rendezvous(s, names)[0] for s in SESSIONS}


def test_adding_a_replica_moves_only_the_sessions_it_takes_over():
    before, after = homes(["n1", "n2", "n3"]), homes(["n1", "n2", "n3", "n4"])
    moved = [s for s in SESSIONS if before[s] != after[s]]
    # Every session that moved went to the new replica; none moved between the old ones.
    assert {after[s] for s in moved} == {"n4"}
    # ...and only its fair share moved: 1/4 of them (hashing mod n would move 3/4).
    assert 0.22 < len(moved) / len(SESSIONS) < 0.28
    mod_n = sum(hash_mod(s, 3) != hash_mod(s, 4) for s in SESSIONS) / len(SESSIONS)
    assert mod_n > 0.7


def hash_mod(key: str, n: int) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % n


def test_a_replica_that_goes_moves_only_its_own_sessions_spread_over_the_rest():
    before, after = homes(["n1", "n2", "n3", "n4"]), homes(["n1", "n2", "n4"])
    moved = [s for s in SESSIONS if before[s] != after[s]]
    assert {before[s] for s in moved} == {"n3"}
    assert len(moved) == sum(h == "n3" for h in before.values())
    spread = {n: sum(after[s] == n for s in moved) / len(moved) for n in ("n1", "n2", "n4")}
    assert all(0.28 < share < 0.39 for share in spread.values()), spread


def test_when_it_comes_back_its_sessions_come_home():
    assert homes(["n1", "n2", "n3", "n4"]) == homes(["n4", "n3", "n2", "n1"])


def test_sessions_spread_evenly_over_replicas():
    counts = {n: 0 for n in ("a", "b", "c")}
    for home in homes(list(counts)).values():
        counts[home] += 1
    assert all(abs(c / len(SESSIONS) - 1 / 3) < 0.03 for c in counts.values()), counts


# -- place: home, unless full or much busier than the least busy -----------------------------
def home_of(key: str, names: list[str]) -> list[str]:
    return rendezvous(key, names)


S = Key("h:s", AFFINITY)
ORDER = home_of(S.value, ["a", "b", "c"])  # S's preference: ORDER[0] first
FIRST, SECOND, THIRD = ORDER


def rep(name: str, load: int, slots: int = 2, capacity: int = 6) -> Replica:
    return Replica(name, load, slots, capacity)


PLACE = [
    ("idle fleet: the session's home", S,
     [rep(FIRST, 0), rep(SECOND, 0), rep(THIRD, 0)], FIRST, AFFINITY),
    ("its home busier but within a batch of the least busy: stays home", S,
     [rep(FIRST, 2), rep(SECOND, 0), rep(THIRD, 1)], FIRST, AFFINITY),
    ("its home a whole batch busier than the least busy (and 1.5x): the least busy", S,
     [rep(FIRST, 3), rep(SECOND, 1), rep(THIRD, 0)], THIRD, SPILL),
    ("...ties between the least busy: the key's order", S,
     [rep(FIRST, 4), rep(THIRD, 1), rep(SECOND, 1)], SECOND, SPILL),
    ("a difference of more than a batch but under 1.5x: stays home", S,
     [rep(FIRST, 5, capacity=9), rep(SECOND, 4, capacity=9), rep(THIRD, 4, capacity=9)],
     FIRST, AFFINITY),
    ("its home full: the least busy of the others (ties: its order)", S,
     [rep(FIRST, 6), rep(SECOND, 5), rep(THIRD, 5)], SECOND, SPILL),
    ("...not a full one, however idle it says it is", S,
     [rep(FIRST, 6), rep(SECOND, 5), rep(THIRD, 2, capacity=2)], SECOND, SPILL),
    ("every replica full: the least busy (whose neuron may still refuse)", S,
     [rep(FIRST, 7), rep(SECOND, 6), rep(THIRD, 8)], SECOND, SPILL),
    ("capacity not known: never full", S,
     [rep(FIRST, 50, slots=64, capacity=0), rep(SECOND, 40, slots=64, capacity=0)],
     FIRST, AFFINITY),
    ("a prefix key: routed the same way, named as such", Key(S.value, PREFIX),
     [rep(FIRST, 0), rep(SECOND, 0)], FIRST, PREFIX),
    ("no key: the least busy, ties by name", None,
     [rep("b", 1), rep("a", 1), rep("c", 2)], "a", LEAST_BUSY),
    ("one replica: it, whatever its load", S, [rep(SECOND, 6)], SECOND, AFFINITY),
]


@pytest.mark.parametrize("key, replicas, expected, reason", [row[1:] for row in PLACE],
                         ids=[row[0] for row in PLACE])
def test_place(key, replicas, expected, reason):
    chosen, why = place(key, replicas)
    assert (chosen.name, why) == (expected, reason)


def test_the_balance_thresholds_are_settings():
    replicas = [rep(FIRST, 4), rep(SECOND, 1), rep(THIRD, 1)]
    assert place(S, replicas)[1] == SPILL
    assert place(S, replicas, Balance(abs_slots=2.0))[1] == AFFINITY
    assert place(S, replicas, Balance(abs_slots=0.5, rel=10))[1] == AFFINITY
    assert place(S, replicas, Balance(abs_slots=0.5, rel=1.1))[1] == SPILL


def test_the_order_to_try_is_the_choice_then_the_keys_preference():
    replicas = [rep(FIRST, 6), rep(SECOND, 1), rep(THIRD, 0)]  # home full
    assert [(r.name, why) for r, why in order(S, replicas)] == [
        (THIRD, SPILL), (SECOND, SPILL), (FIRST, SPILL)]  # the full one last
    idle = [rep(n, 0) for n in ORDER]
    assert [(r.name, why) for r, why in order(S, idle)] == [
        (FIRST, AFFINITY), (SECOND, SPILL), (THIRD, SPILL)]
    assert [(r.name, why) for r, why in order(None, [rep("b", 2), rep("a", 1)])] == [
        ("a", LEAST_BUSY), ("b", SPILL)]


# -- where a session lives: its last replica, else its rendezvous order ---------------------
LAST = [
    ("served last on its third choice: stays there", [rep(FIRST, 0), rep(SECOND, 0),
                                                       rep(THIRD, 1)], THIRD, THIRD, AFFINITY),
    ("...unless that one is much busier: the next in its order", [
        rep(FIRST, 0), rep(SECOND, 0), rep(THIRD, 3)], THIRD, FIRST, SPILL),
    ("...or full", [rep(FIRST, 5), rep(SECOND, 5), rep(THIRD, 6)], THIRD, FIRST, SPILL),
    ("its last replica gone (not among them): its rendezvous order", [
        rep(FIRST, 0), rep(SECOND, 0)], THIRD, FIRST, AFFINITY),
]


@pytest.mark.parametrize("replicas, last, expected, reason", [row[1:] for row in LAST],
                         ids=[row[0] for row in LAST])
def test_place_a_session_served_before(replicas, last, expected, reason):
    chosen, why = order(S, replicas, last=last)[0]
    assert (chosen.name, why) == (expected, reason)


def test_a_tag_names_a_session_of_one_account_and_hides_its_key():
    key = Key("h:7d1f0c0e-session", AFFINITY)
    a, b = key.tagged("acct-a"), key.tagged("acct-b")
    assert a.tag != b.tag and a.tag == key.tagged("acct-a").tag
    assert len(a.tag) == 16 and "7d1f" not in a.tag and a.value == key.value


def test_last_served_is_the_newest_of_this_worker_and_the_neurons_lists():
    from cortex.gateway.fleet import ModelOnNode, Node

    def node(name: str, **sessions: float) -> Node:
        n = Node(name, f"http://{name}")
        n.models["file:m"] = ModelOnNode("file:m", "loaded", sessions=sessions)
        return n

    nodes = [node("a", t1=10.0), node("b", t1=20.0, t2=5.0), node("c")]
    last = LastServed(keep=2)
    assert last.where("file:m", "t1", nodes) == "b"  # the newest neuron list
    assert last.where("file:m", "t9", nodes) is None  # none served it
    last.record("file:m", "t1", "c", 15.0)
    assert last.where("file:m", "t1", nodes) == "b"  # b's list is newer than our record
    last.record("file:m", "t1", "c", 25.0)
    assert last.where("file:m", "t1", nodes) == "c"
    assert last.where("file:m", "t1", nodes[:2]) == "b"  # c gone: the next newest
    assert last.where("file:other", "t1", nodes) is None  # another model's session
    last.record("file:m", "t2", "a", 1.0)  # older than b's list: b
    assert last.where("file:m", "t2", nodes) == "b"
    last.record("file:m", "t3", "a", 1.0)
    last.record("file:m", "t4", "a", 1.0)  # keeps the newest 2: t1 forgotten
    assert last.where("file:m", "t1", nodes) == "b"


def test_newest_keeps_the_keys_set_last_newest_last():
    from cortex.core.recent_sessions import Newest

    n: Newest[str, int] = Newest(keep=3)
    for k in "abcd":  # a falls out
        n.put(k, ord(k))
    n.put("b", 0)  # set again: newest
    assert n.newest(10) == [("c", 99), ("d", 100), ("b", 0)]
    assert n.newest(2) == [("d", 100), ("b", 0)] and n.get("a") is None


def test_a_neurons_session_list_is_read_leniently():
    from cortex.core.recent_sessions import read_report

    tag = "0123456789abcdef"
    assert read_report({tag: 2.5, "not a tag": 1, "f" * 16: -1, "e" * 16: "x"}, 100.0) == {
        tag: 97.5}
    assert read_report(["a list"], 100.0) == {} and read_report(None, 1.0) == {}


@pytest.mark.parametrize("routing, message", [
    ({"policy": "round_robin"}, "[routing] policy must be 'affinity' or 'least_busy', got "
     "'round_robin'"),
    ({"balance_rel": 0.5}, "[routing] balance_abs_slots must be >= 0 and balance_rel >= 1"),
    ({"balance_abs_slots": -1}, "[routing] balance_abs_slots must be >= 0 and balance_rel "
     ">= 1"),
    ({"sticky": True}, "unknown key 'routing.sticky' (known keys: balance_abs_slots, "
     "balance_rel, policy)"),
])
def test_a_bad_routing_section_stops_the_gateway_naming_the_key(routing, message):
    from cortex.core.config import ConfigError, build
    from cortex.gateway.config import GatewayConfig

    with pytest.raises(ConfigError) as err:
        build(GatewayConfig, {"routing": routing}, "cortex.toml")
    assert message in str(err.value)
