"""Replicas on demand: the scaler's decisions as tables over node states, then its wiring
with neuron stand-ins (cortex.testing.standin) that report saturation on cue: one and two
gateways over the same neurons.
"""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import generate_latest

from cortex.gateway.catalogue import Catalogue
from cortex.gateway.config import ModelEntry, ModelsConfig, Replicas
from cortex.gateway.fleet import Fleet, ModelOnNode, Node
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.router import Router
from cortex.gateway.scaler import DOWN, IDLE, MIN, SATURATED, UP, Action, Scaler
from cortex.testing.waiting import wait_for

GB = 1024
M = "file:m"
T0 = time.time()  # "now" for the tables: rows are built at import, decided on later


def node(name: str, *models: ModelOnNode, free: int = 8 * GB, drained: bool = False) -> Node:
    return Node(name, f"http://{name}:13131", healthy=True, polled=True, drained=drained,
                devices=[{"index": 0, "vram_total_mb": 16 * GB, "vram_free_mb": free}],
                models={m.id: m for m in models})


def hot(load_id: str = M) -> ModelOnNode:
    """Both slots busy, two waiting: saturated."""
    return ModelOnNode(load_id, "loaded", vram_mb=2 * GB, in_flight=2, queue_depth=2,
                       slots=2, capacity=6, last_used=time.time())


def warm(load_id: str = M) -> ModelOnNode:
    """Both slots busy, none waiting: not saturated."""
    return ModelOnNode(load_id, "loaded", vram_mb=2 * GB, in_flight=2, slots=2, capacity=6,
                       last_used=time.time())


def idle(load_id: str = M, secs: float = 1000, vram: int = 2 * GB) -> ModelOnNode:
    """Nothing running or queued, last used `secs` before T0."""
    return ModelOnNode(load_id, "loaded", vram_mb=vram, slots=2, capacity=6,
                       last_used=T0 - secs)


def loading(load_id: str = M) -> ModelOnNode:
    return ModelOnNode(load_id, "loading")


def scaler(*nodes: Node, entries: tuple[ModelEntry, ...] = ()) -> Scaler:
    entries = entries or (ModelEntry("m", scale_up_after_secs=10, scale_down_after_secs=300),)
    fleet = Fleet([], upstream=None, interval=1.0)
    fleet.nodes.update((n.name, n) for n in nodes)
    catalogue = Catalogue(ModelsConfig(list(entries)))
    metrics = GatewayMetrics()
    router = Router(fleet, catalogue, metrics, strategy="lru", load_timeout=30)
    return Scaler(fleet, catalogue, router, metrics, interval=1.0, identity="test")


def entry(**kw) -> ModelEntry:
    return ModelEntry("m", **{"scale_up_after_secs": 10, "scale_down_after_secs": 300, **kw})


# -- scale up: every replica saturated, for long enough -----------------------------------------
def looks(s: Scaler, e: ModelEntry, *at: float) -> list[Action | None]:
    """The decision at each look (seconds from now)."""
    t0 = time.time()
    return [s.decide(e, t0 + t) for t in at]


def test_saturated_long_enough_adds_a_replica():
    s = scaler(node("a", hot()), node("b"))
    assert looks(s, entry(), 0, 5, 10) == [None, None, Action("m", UP, SATURATED)]


def test_one_look_not_saturated_starts_the_wait_again():
    e = entry()
    s = scaler(node("a", hot()), node("b"))
    assert looks(s, e, 0, 5) == [None, None]
    s.fleet.nodes["a"].models[M] = warm()
    assert looks(s, e, 8) == [None]
    s.fleet.nodes["a"].models[M] = hot()
    assert looks(s, e, 12, 21, 22) == [None, None, Action("m", UP, SATURATED)]


SCALE_UP = [
    ("every replica saturated: one more",
     [node("a", hot()), node("b", hot()), node("c")], entry(), Action("m", UP, SATURATED)),
    ("one replica of two saturated (sessions stick to it): none; it spills instead",
     [node("a", hot()), node("b", warm()), node("c")], entry(), None),
    ("a replica loading anywhere: none (one action at a time, across gateways)",
     [node("a", hot()), node("b", loading()), node("c")], entry(), None),
    ("at replicas.max: none",
     [node("a", hot()), node("b", hot()), node("c")], entry(replicas=Replicas(max=2)), None),
    ("every feasible node has it (the default max): none",
     [node("a", hot()), node("b", hot()), node("c")], entry(pinned_on=["a", "b"]), None),
    ("no node with room (a drained one does not count): none",
     [node("a", hot()), node("b", drained=True)], entry(), None),
    ("not loaded anywhere: none (the first request loads it)",
     [node("a"), node("b")], entry(), None),
]


@pytest.mark.parametrize("nodes, e, expected", [row[1:] for row in SCALE_UP],
                         ids=[row[0] for row in SCALE_UP])
def test_scale_up(nodes, e, expected):
    s = scaler(*nodes, entries=(e,))
    assert looks(s, e, 0, 10)[-1] == expected


# -- the floor: replicas.min kept loaded like a pin ---------------------------------------------
FLOOR = [
    ("fewer than min: one more, with no load at all",
     [node("a", idle()), node("b")], entry(replicas=Replicas(min=2)), Action("m", UP, MIN)),
    ("none loaded and min 1: loaded", [node("a"), node("b")],
     entry(replicas=Replicas(min=1)), Action("m", UP, MIN)),
    ("at min: nothing, however idle", [node("a", idle()), node("b", idle())],
     entry(replicas=Replicas(min=2)), None),
    ("one loading toward min: wait for it", [node("a", idle()), node("b", loading()),
                                             node("c")], entry(replicas=Replicas(min=3)), None),
]


@pytest.mark.parametrize("nodes, e, expected", [row[1:] for row in FLOOR],
                         ids=[row[0] for row in FLOOR])
def test_floor(nodes, e, expected):
    assert scaler(*nodes, entries=(e,)).decide(e, T0) == expected


# -- scale down: a replica past the floor, idle long enough ---------------------------------------
SCALE_DOWN = [
    ("two idle replicas, no floor: the one idle longest goes",
     [node("a", idle(secs=400)), node("b", idle(secs=900))], entry(),
     Action("m", DOWN, IDLE, node="b")),
    ("idle, but not for scale_down_after_secs: stays",
     [node("a", idle(secs=100)), node("b", idle(secs=200))], entry(), None),
    ("the last replica is the reaper's (keep_alive), not the scaler's",
     [node("a", idle(secs=5000))], entry(), None),
    ("a busy replica is never idle", [node("a", warm()), node("b", warm())], entry(), None),
    ("min 2 of 3: one may go", [node("a", idle()), node("b", idle(secs=2000)),
                                node("c", idle())], entry(replicas=Replicas(min=2)),
     Action("m", DOWN, IDLE, node="b")),
    ("min 2 of 2: none goes", [node("a", idle()), node("b", idle())],
     entry(replicas=Replicas(min=2)), None),
    ("a load under way: nothing else happens", [node("a", idle()), node("b", idle()),
                                               node("c", loading())], entry(), None),
]


@pytest.mark.parametrize("nodes, e, expected", [row[1:] for row in SCALE_DOWN],
                         ids=[row[0] for row in SCALE_DOWN])
def test_scale_down(nodes, e, expected):
    assert scaler(*nodes, entries=(e,)).decide(e, T0) == expected


def test_a_replica_this_worker_just_sent_a_request_to_is_not_idle():
    e = entry()
    s = scaler(node("a", idle()), node("b", idle(secs=2000)))
    s.router.routed(s.fleet.nodes["b"], M)  # a request on its way to b now
    assert s.decide(e, time.time()) == Action("m", DOWN, IDLE, node="a")


# -- where a replica goes: free memory first, only lower priorities pushed out ----------------
CANDIDATES = [
    ("most free memory first", entry(vram_mb=4 * GB),
     [node("a", hot()), node("b", free=6 * GB), node("c", free=12 * GB)], ["c", "b"]),
    ("room made by an idle model of a lower priority",
     entry(vram_mb=4 * GB, residency_priority=100),
     [node("a", hot()), node("b", idle("file:low", vram=6 * GB), free=1 * GB)], ["b"]),
    ("never by one of the same or a higher priority (whatever the eviction strategy)",
     entry(vram_mb=4 * GB, residency_priority=100),
     [node("a", hot()), node("b", idle("file:same", vram=6 * GB), free=1 * GB)], []),
    ("never by a pinned one", entry(vram_mb=4 * GB, residency_priority=100),
     [node("a", hot()), node("p", idle("file:pinned", vram=6 * GB), free=1 * GB)], []),
    ("never by a busy one", entry(vram_mb=4 * GB),
     [node("a", hot()), node("b", warm("file:low"), free=1 * GB)], []),
    ("a node already holding or loading it is no candidate", entry(),
     [node("a", hot()), node("b", loading()), node("c")], ["c"]),
    ("nor a drained node", entry(), [node("a", hot()), node("b", drained=True)], []),
]


@pytest.mark.parametrize("e, nodes, expected", [row[1:] for row in CANDIDATES],
                         ids=[row[0] for row in CANDIDATES])
def test_candidates(e, nodes, expected):
    others = (ModelEntry("file:low", residency_priority=50),
              ModelEntry("file:same", residency_priority=100),
              ModelEntry("file:pinned", residency_priority=10, pinned_on=["p"]))
    s = scaler(*nodes, entries=(e, *others))
    assert [n.name for n in s.candidates(e)] == expected


def test_eviction_for_a_request_keeps_a_models_floor():
    # A cold load for another model may evict idle models, but not below their min.
    floor = ModelEntry("floor", replicas=Replicas(min=1))
    s = scaler(node("a", idle("file:floor")), entries=(floor, entry()))
    assert s.router.victims(s.fleet.nodes["a"], entry()) == []
    s.fleet.nodes["b"] = node("b", idle("file:floor"))
    assert [m.id for m in s.router.victims(s.fleet.nodes["a"], entry())] == ["file:floor"]


def test_the_reaper_keeps_a_models_floor():
    e = ModelEntry("m", keep_alive=60, replicas=Replicas(min=1))
    s = scaler(node("a", idle(secs=1000)), entries=(e,))
    assert not s.router._idle_model(s.fleet.nodes["a"], s.fleet.nodes["a"].models[M],
                                    time.time())


def test_gateways_wait_different_delays_under_one_poll_interval():
    s = scaler(node("a"))
    delays = set()
    for identity in ("gw1/100", "gw1/101", "gw2/100"):
        s.identity = identity
        delays.add(s.delay("m"))
    assert len(delays) == 3 and all(0 <= d < s.interval for d in delays)


# -- wiring: stand-ins that report saturation ---------------------------------------------------
@pytest.fixture
def neurons(standin_factory):
    """n1 holds m (2 slots); n2 and n3 have room for it; loads take 0.5 s."""
    def make(name: str, loaded: bool) -> object:
        s = standin_factory((M,), loaded=loaded, slots=2, load_secs=0.5)
        s.name = name
        return s

    return {"n1": make("n1", True), "n2": make("n2", False), "n3": make("n3", False)}


def saturate(n: object) -> None:
    n.in_flight, n.queue_depth = 2, 2


def loads(neurons: dict) -> list[str]:
    return [name for name, n in neurons.items() if n.hits("/models/load")]


MODEL = ModelEntry("m", scale_up_after_secs=0.6, scale_down_after_secs=2)


def test_a_saturated_model_gets_one_more_replica_and_requests_go_on_meanwhile(
        neurons, gateway_factory):
    gw = gateway_factory(neurons, [MODEL])
    wait_for(lambda: gw.gw.fleet.replicas(M), "the gateway to see m on n1")
    saturate(neurons["n1"])
    wait_for(lambda: any(n.loading for n in neurons.values()), "a second replica to load")
    # While it loads, requests go to the replica that is up.
    r = gw.chat("m")
    assert r.status_code == 200 and r.headers["X-Cortex-Node"] == "n1"
    wait_for(lambda: len(gw.gw.fleet.replicas(M)) == 2, "two replicas", timeout=10)
    assert len(loads(neurons)) == 1
    event = gw.gw.scaler.events[-1]
    assert (event.action, event.reason, event.result) == (UP, SATURATED, "ok")
    # The dashboard shows the replicas and the event; Prometheus counts both.
    state = gw.get("/ui/api/state").json()["state"]
    model = next(m for m in state["models"] if m["id"] == "m")
    assert model["replicas"]["serving"] == 2 and model["replicas"]["max"] == 3
    assert [(e["action"], e["reason"], e["result"]) for e in state["scale_events"]] == [
        (UP, SATURATED, "ok")]
    gw.gw.metrics.flush()
    scraped = generate_latest(gw.gw.metrics.registry).decode()
    assert ('cortex_scale_events_total{action="up",model="m",reason="saturated",'
            'result="ok"} 1.0') in scraped


def more_looks(gw: object, n: int = 5) -> None:
    """Until the gateway has polled every neuron `n` more times (and scaled on each look):
    what must not happen has no event to wait for, but a count of looks."""
    nodes = gw.gw.fleet.nodes.values()
    start = {node.name: node.polls_started for node in nodes}
    wait_for(lambda: all(node.polls_started >= start[node.name] + n for node in nodes),
             f"{n} more polls")


def test_two_gateways_over_the_same_neurons_add_one_replica_between_them(
        neurons, gateway_factory):
    gws = [gateway_factory(neurons, [MODEL]) for _ in range(2)]
    for i, gw in enumerate(gws):
        gw.gw.scaler.identity = f"gateway-{i}"
    for gw in gws:
        wait_for(lambda gw=gw: gw.gw.fleet.replicas(M), "the gateways to see m on n1")
    saturate(neurons["n1"])
    wait_for(lambda: len(gws[0].gw.fleet.replicas(M)) == 2, "a second replica", timeout=10)
    # Both saw the same saturation for as long. The one that acted second read the
    # neurons again first and saw the load under way (skipped); had both read before
    # either load began, both chose the same node from the same reports and the neuron
    # made one load of their two calls. The new replica is idle: no third.
    for gw in gws:
        more_looks(gw)
    assert len(loads(neurons)) == 1
    assert [len(gw.gw.fleet.replicas(M)) for gw in gws] == [2, 2]
    events = [e for gw in gws for e in gw.gw.scaler.events]
    assert len({e.node for e in events if e.result == "ok"}) == 1
    assert {e.result for e in events} <= {"ok", "skipped"}


def test_an_extra_replica_idle_long_enough_is_unloaded_down_to_the_floor(
        neurons, gateway_factory):
    for n in neurons.values():
        n.loaded[M] = True
        n.last_used[M] = time.time() - 100
    neurons["n2"].last_used[M] = time.time() - 200  # idle longest: goes first
    gw = gateway_factory(neurons, [ModelEntry("m", scale_down_after_secs=1,
                                              replicas=Replicas(min=2))])
    wait_for(lambda: sum(n.hits("/models/unload") != [] for n in neurons.values()) == 1,
             "one replica to go")
    assert neurons["n2"].hits("/models/unload") == [{"model_id": M, "if_idle": True}]
    wait_for(lambda: len(gw.gw.fleet.replicas(M)) == 2, "the gateway to see two left")
    more_looks(gw)
    assert len(gw.gw.fleet.replicas(M)) == 2
    assert [(e.action, e.reason, e.node) for e in gw.gw.scaler.events] == [(DOWN, IDLE, "n2")]


def test_a_floor_is_loaded_with_no_requests_one_replica_at_a_time(neurons, gateway_factory):
    neurons["n1"].loaded[M] = False
    seen: list[int] = []

    def watch() -> None:  # how many loads run at once, while the floor fills
        while len(seen) < 400:
            seen.append(sum(len(n.loading) for n in neurons.values()))
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    gw = gateway_factory(neurons, [ModelEntry("m", replicas=Replicas(min=2))])
    wait_for(lambda: len(gw.gw.fleet.replicas(M)) == 2, "two replicas", timeout=10)
    assert max(seen) == 1
    assert [(e.action, e.reason) for e in gw.gw.scaler.events] == [(UP, MIN), (UP, MIN)]


@pytest.mark.parametrize("replicas, message", [
    ({"min": 2, "max": 1}, "[[models]] m: replicas.max must be >= max(min, 1) = 2, got 1"),
    ({"min": -1}, "[[models]] m: replicas.min must be >= 0, got -1"),
    ({"max": 0}, "[[models]] m: replicas.max must be >= max(min, 1) = 1, got 0"),
    ({"mni": 1}, "unknown key 'models[0].replicas.mni' (known keys: max, min)"),
])
def test_bad_replicas_stop_the_gateway_naming_the_model(replicas, message):
    from cortex.core.config import ConfigError, build

    with pytest.raises(ConfigError) as err:
        build(ModelsConfig, {"models": [{"id": "m", "replicas": replicas}]}, "models.toml")
    assert str(err.value) == f"models.toml: {message}"
