"""Placement and eviction, the router's policy, as tables over plain node states.

`feasible` (which nodes may hold a model at all), `rank` (which of them loads it first),
`victims` (which loaded models may make room, in what order) and the replica a request
goes to when its model is loaded read nothing but the nodes' polled state and the
catalogue: each row below is a fleet as the gateway last saw it and the decision the
router makes. The wiring (loads, unloads, retries) is tested end to end in test_gateway.py
and test_faults.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from cortex.gateway.affinity import Affinity
from cortex.gateway.catalogue import Catalogue, ModelRef
from cortex.gateway.config import ModelEntry, ModelsConfig
from cortex.gateway.fleet import Fleet, ModelOnNode, Node
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.placement import InFlight
from cortex.gateway.router import Router

GB = 1024


def node(name: str, free: int = 8 * GB, *, total: int = 16 * GB, gpus: int = 1,
         models: tuple[ModelOnNode, ...] = (), polled: bool = True) -> Node:
    """A healthy node as a poll left it: `gpus` devices of `total` MB, `free` MB free on
    each (no devices at all when gpus is 0)."""
    devices = [{"index": i, "vram_total_mb": total, "vram_free_mb": free} for i in range(gpus)]
    return Node(name, f"http://{name}:13131", healthy=True, polled=polled, devices=devices,
                models={m.id: m for m in models})


def model(load_id: str, vram: int = 2 * GB, *, used: float = 0.0, busy: int = 0,
          status: str = "loaded") -> ModelOnNode:
    """A model on a node: `used`, when it last served; `busy`, requests on it now."""
    return ModelOnNode(load_id, status, vram_mb=vram, last_used=used, in_flight=busy)


def router(*catalogue: ModelEntry, strategy: str = "lru") -> Router:
    return Router(Fleet([], upstream=None, interval=1.0), Catalogue(ModelsConfig(list(catalogue))),
                  GatewayMetrics(), strategy=strategy, load_timeout=30)


# -- feasible: may this node hold the model at all? ----------------------------------------
FEASIBLE = [
    ("no constraints: every node",
     ModelEntry("m"), [node("a"), node("b")], ["a", "b"]),
    ("pinned_on: only the pinned nodes",
     ModelEntry("m", pinned_on=["b"]), [node("a"), node("b"), node("c")], ["b"]),
    ("min_devices: nodes with that many devices",
     ModelEntry("m", min_devices=2), [node("one"), node("two", gpus=2)], ["two"]),
    ("min_device_vram_mb: a device that large",
     ModelEntry("m", min_device_vram_mb=40 * GB),
     [node("small", total=24 * GB), node("big", total=80 * GB)], ["big"]),
    ("both: that many devices, each that large",
     ModelEntry("m", min_devices=2, min_device_vram_mb=40 * GB),
     [node("one-big", total=80 * GB), node("two-small", gpus=2, total=24 * GB),
      node("two-big", gpus=2, total=80 * GB)], ["two-big"]),
    ("a node not polled yet is given the benefit of the doubt",
     ModelEntry("m", min_devices=4), [node("new", gpus=0, polled=False)], ["new"]),
    ("so is a polled node that reports no devices",
     ModelEntry("m", min_devices=4), [node("quiet", gpus=0)], ["quiet"]),
    ("pinned to a node that cannot hold it: nowhere",
     ModelEntry("m", pinned_on=["a"], min_devices=2), [node("a"), node("b", gpus=2)], []),
]


@pytest.mark.parametrize("entry, nodes, expected", [row[1:] for row in FEASIBLE],
                         ids=[row[0] for row in FEASIBLE])
def test_feasible(entry, nodes, expected):
    assert [n.name for n in router(entry).feasible(entry, nodes)] == expected


# -- rank: who loads it first? -----------------------------------------------------------------
# pinned > fits in free memory > fits after eviction > most free > name
RANK = [
    ("most free memory first",
     ModelEntry("m", vram_mb=4 * GB), [node("a", 6 * GB), node("b", 12 * GB), node("c", 9 * GB)],
     ["b", "c", "a"]),
    ("ties go by name",
     ModelEntry("m", vram_mb=4 * GB), [node("b"), node("c"), node("a")], ["a", "b", "c"]),
    ("a node it fits in beats one it fits in only after an eviction",
     ModelEntry("m", vram_mb=6 * GB),
     [node("evict", 4 * GB, models=(model("file:old", 4 * GB),)), node("fits", 7 * GB)],
     ["fits", "evict"]),
    ("fitting after an eviction beats not fitting, however much is free",
     ModelEntry("m", vram_mb=10 * GB),
     [node("never", 9 * GB), node("evict", 2 * GB, models=(model("file:old", 8 * GB),))],
     ["evict", "never"]),
    ("a busy model makes no room: that node does not fit after eviction",
     ModelEntry("m", vram_mb=10 * GB),
     [node("busy", 2 * GB, models=(model("file:old", 8 * GB, busy=1),)), node("free", 3 * GB)],
     ["free", "busy"]),
    ("pinned nodes first, even with less room",
     ModelEntry("m", vram_mb=4 * GB, pinned_on=["p"]), [node("a", 12 * GB), node("p", 1 * GB)],
     ["p", "a"]),
    ("no vram_mb in the catalogue: it fits everywhere, most free first",
     ModelEntry("m"), [node("a", 1 * GB), node("b", 2 * GB)], ["b", "a"]),
    ("a node without devices has no free memory: last",
     ModelEntry("m", vram_mb=1 * GB), [node("cpu-less", gpus=0), node("a", 2 * GB)],
     ["a", "cpu-less"]),
]


@pytest.mark.parametrize("entry, nodes, expected", [row[1:] for row in RANK],
                         ids=[row[0] for row in RANK])
def test_rank(entry, nodes, expected):
    assert [n.name for n in router(entry).rank(entry, nodes)] == expected


# -- replica: where a request for a loaded model goes ------------------------------------------
def drained(n: Node) -> Node:
    n.drained = True
    return n


def down(n: Node) -> Node:
    n.healthy = False
    return n


REPLICA = [
    ("the least busy replica", [node("a", models=(model("file:m", busy=2),)),
                                node("b", models=(model("file:m", busy=1),))], set(), "b"),
    ("equally busy: by name", [node("b", models=(model("file:m"),)),
                               node("a", models=(model("file:m"),))], set(), "a"),
    ("a replica still loading takes nothing", [node("a", models=(model("file:m", busy=5),)),
                                               node("b", models=(model("file:m",
                                                                       status="loading"),))],
     set(), "a"),
    ("nor a drained or unhealthy node", [node("a", models=(model("file:m", busy=9),)),
                                         drained(node("b", models=(model("file:m"),))),
                                         down(node("c", models=(model("file:m"),)))],
     set(), "a"),
    ("a node already tried is left out", [node("a", models=(model("file:m", busy=9),)),
                                          node("b", models=(model("file:m"),))], {"b"}, "a"),
    ("nowhere loaded: none", [node("a", models=(model("file:other"),))], set(), None),
]


@dataclass
class Probe:  # what a placement policy reads of a request
    model: ModelRef = field(default_factory=lambda: ModelRef("file:m", None))
    path: str = "/v1/chat/completions"
    body: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    session: None = None  # (the least_busy policy reads none)


def first_choice(nodes: list[Node], exclude: set[str] = frozenset(),
                 in_flight: InFlight | None = None) -> str | None:
    """Where the dispatcher sends a request first: the policy's order of the replicas."""
    fleet = Fleet([], upstream=None, interval=1.0)
    fleet.nodes.update((n.name, n) for n in nodes)
    replicas = [n for n in fleet.replicas("file:m") if n.name not in exclude]
    if not replicas:
        return None
    policy = Affinity(in_flight or InFlight(), sticky=False)  # [routing] policy = least_busy
    return policy.order(Probe(), replicas)[0].node.name


@pytest.mark.parametrize("nodes, exclude, expected", [row[1:] for row in REPLICA],
                         ids=[row[0] for row in REPLICA])
def test_replica(nodes, exclude, expected):
    assert first_choice(nodes, exclude) == expected


# What this worker has sent and not yet seen finish counts on top of the last poll, so a
# burst spreads over the replicas instead of herding onto the one the poll called idle.
BURST = [
    ("two idle replicas, four at once: 2 + 2",
     [node("a", models=(model("file:m"),)), node("b", models=(model("file:m"),))], 4,
     ["a", "b", "a", "b"]),
    ("one busy by the poll: the other takes the first ones",
     [node("a", models=(model("file:m", busy=2),)), node("b", models=(model("file:m"),))], 4,
     ["b", "b", "a", "b"]),
    ("three replicas, three at once: one each",
     [node(x, models=(model("file:m"),)) for x in "cab"], 3, ["a", "b", "c"]),
]


@pytest.mark.parametrize("nodes, count, expected", [row[1:] for row in BURST],
                         ids=[row[0] for row in BURST])
def test_a_burst_spreads(nodes, count, expected):
    in_flight, went = InFlight(), []
    for _ in range(count):  # sent at once: none has finished
        went.append(first_choice(nodes, in_flight=in_flight))
        in_flight.add(went[-1], "file:m")
    assert went == expected
    for name in went:  # as they finish, the count goes back to the poll's
        in_flight.done(name, "file:m")
    assert first_choice(nodes, in_flight=in_flight) == expected[0]


def test_what_a_poll_counted_is_not_counted_again():
    """A replica's load is the poll's count plus what this worker sent since that poll
    began: counting twice what the neuron had already reported made a session's home look
    twice as busy as it was, and its own concurrent turns spilled (bench/fleet_agents.py)."""
    in_flight, a = InFlight(), node("a", models=(model("file:m"),))
    first, _ = in_flight.add("a", "file:m"), in_flight.add("a", "file:m")
    assert in_flight.load(a, "file:m") == 2  # no poll has seen them: ours on top of 0
    a.models["file:m"].in_flight, a.counted_at = 2, time.time()  # a poll that saw both
    assert in_flight.load(a, "file:m") == 2
    in_flight.add("a", "file:m")  # sent after that poll began
    assert in_flight.load(a, "file:m") == 3
    in_flight.done("a", "file:m", first)
    assert in_flight.of("a", "file:m") == 2 and in_flight.load(a, "file:m") == 3


# -- victims: what may make room, least recently used first --------------------------------------
INCOMING = ModelEntry("new", vram_mb=4 * GB)  # residency_priority 100
VICTIMS = [
    ("least recently used first",
     "lru", [], [model("file:b", used=300), model("file:a", used=100), model("file:c", used=200)],
     ["file:a", "file:c", "file:b"]),
    ("same last use: by id",
     "lru", [], [model("file:b", used=5), model("file:a", used=5)], ["file:a", "file:b"]),
    ("a model serving or queueing a request stays",
     "lru", [], [model("file:busy", busy=1), model("file:idle")], ["file:idle"]),
    ("a model still loading (or only on disk) is not evicted",
     "lru", [], [model("file:loading", status="loading"), model("file:available",
                                                                status="available")], []),
    ("the incoming model itself is never its own victim",
     "lru", [], [model("file:new"), model("file:other")], ["file:other"]),
    ("a model pinned on this node stays",
     "lru", [ModelEntry("keep", pinned_on=["n"])], [model("file:keep"), model("file:go")],
     ["file:go"]),
    ("a model pinned elsewhere may go from here",
     "lru", [ModelEntry("there", pinned_on=["other"])], [model("file:there")], ["file:there"]),
    ("lru ignores priorities",
     "lru", [ModelEntry("vip", residency_priority=500)], [model("file:vip")], ["file:vip"]),
    ("priority: a model that matters more than the incoming one stays",
     "priority", [ModelEntry("vip", residency_priority=500)], [model("file:vip")], []),
    ("priority: equal or lower priority may go, still in LRU order",
     "priority", [ModelEntry("peer", residency_priority=100), ModelEntry("low",
                                                                         residency_priority=1)],
     [model("file:peer", used=1), model("file:low", used=2)], ["file:peer", "file:low"]),
    ("priority: a model outside the catalogue counts as priority 0",
     "priority", [], [model("file:stray")], ["file:stray"]),
]


@pytest.mark.parametrize("strategy, catalogue, on_node, expected", [row[1:] for row in VICTIMS],
                         ids=[row[0] for row in VICTIMS])
def test_victims(strategy, catalogue, on_node, expected):
    r = router(*catalogue, INCOMING, strategy=strategy)
    victims = r.victims(node("n", models=tuple(on_node)), INCOMING)
    assert [m.id for m in victims] == expected
