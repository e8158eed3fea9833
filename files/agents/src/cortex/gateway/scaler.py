"""Replicas on demand: one more where every replica of a model stays saturated, one fewer
where a replica past the model's floor stays idle.

Beside the idle reaper, in every gateway worker, on the fleet view the poller keeps:

- up: every routable replica saturated (all slots busy, requests queued) in every look
  for `scale_up_after_secs` → one more replica on the best feasible node (free memory
  first; it may push out only idle models of a lower residency_priority, never a pinned
  one), up to `replicas.max` (default: every feasible node). Fewer than `replicas.min`
  loaded → one more, whatever the load (the floor is kept like a pin).
- down: a replica idle (nothing running or queued, nothing sent by this worker) for
  `scale_down_after_secs` while the model has more than max(min, 1) → unloaded (the one
  idle longest; the last replica of a model without a floor is the reaper's, by
  keep_alive).

One action per model at a time, here and across gateways, without shared state: a model
with a replica loading on any node is left alone (neurons report their loads as they
start), and before acting a gateway waits a delay of its own (a hash of its identity and
the model, under one poll interval), reads every neuron again and decides again. The
first gateway's load shows on the neuron before the others look again; two that still
act at once pick the same node from the same reports, and the neuron single-flights
their loads into one. See docs/architecture.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cortex.core.errors import ApiError, Unavailable
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.config import ModelEntry
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.router import Router
from cortex.gateway.upstream import UpstreamError

log = logging.getLogger(__name__)

UP, DOWN = "up", "down"
# Why a scale action was taken; OPERATOR: `cortex load` / `cortex unload` (the admin API).
SATURATED, MIN, IDLE, OPERATOR = "saturated", "min", "idle", "operator"


@dataclass(frozen=True)
class Action:
    model: str  # the catalogue id
    action: str  # UP | DOWN
    reason: str  # SATURATED | MIN | IDLE
    node: str = ""  # DOWN: the replica that goes (UP picks its node when it acts)


@dataclass(frozen=True)
class ScaleEvent:
    at: float
    model: str
    action: str
    reason: str
    node: str
    result: str  # ok | failed | skipped (another gateway acted, or the need went)
    detail: str = ""

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def default_identity() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


class Scaler:
    def __init__(self, fleet: Fleet, catalogue: Catalogue, router: Router,
                 metrics: GatewayMetrics, *, interval: float, identity: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self.fleet, self.catalogue, self.router, self.metrics = fleet, catalogue, router, metrics
        self.interval = interval
        self.identity = identity or default_identity()
        self.clock = clock
        self.events: deque[ScaleEvent] = deque(maxlen=200)  # this worker's, newest last
        self._saturated_since: dict[str, float] = {}
        self._acting: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    # -- deciding (pure over the fleet view) ---------------------------------------------
    def decide(self, entry: ModelEntry, now: float) -> Action | None:
        """What `entry` needs now, if anything. Keeps the time its replicas have been
        saturated since, so call it once a look (the tick does)."""
        replicas = self.fleet.replicas(entry.load_id)
        loading = [n for n in self.fleet.nodes.values()
                   if (m := n.models.get(entry.load_id)) is not None and m.status == "loading"]
        floor = entry.replicas.min
        if not all(r.loaded(entry.load_id).saturated for r in replicas) or not replicas:
            self._saturated_since.pop(entry.id, None)
        else:
            self._saturated_since.setdefault(entry.id, now)
        if loading:
            return None  # one action at a time: a load under way anywhere is one
        if len(replicas) < floor:
            return Action(entry.id, UP, MIN) if self._room(entry) else None
        since = self._saturated_since.get(entry.id)
        if since is not None and now - since >= entry.scale_up_after_secs and (
                len(replicas) < self.max_replicas(entry)) and self._room(entry):
            return Action(entry.id, UP, SATURATED)
        if len(replicas) > max(floor, 1):
            idle = [(self._idle_since(n, entry), n.name) for n in replicas]
            idle = [(t, name) for t, name in idle if t and now - t >= entry.scale_down_after_secs]
            if idle:
                return Action(entry.id, DOWN, IDLE, node=min(idle)[1])
        return None

    def saturated_since(self, model: str) -> float | None:
        """Since when every replica of `model` has been saturated (None: not now)."""
        return self._saturated_since.get(model)

    def max_replicas(self, entry: ModelEntry) -> int:
        return entry.replicas.max or len(self.router.feasible(entry))

    def _room(self, entry: ModelEntry) -> bool:
        return bool(self.candidates(entry))

    def candidates(self, entry: ModelEntry) -> list[Node]:
        """Nodes that may take one more replica, best first: routable, feasible, without
        the model, and with room for it in free memory plus what idle models of a lower
        priority hold (the neuron has the last word: it refuses what does not fit)."""
        need = entry.vram_mb or 0

        def fits(n: Node) -> bool:
            m = n.models.get(entry.load_id)
            if not n.routable or (m is not None and m.status in ("loaded", "loading")):
                return False
            return not need or n.vram_free_mb + sum(
                v.vram_mb for v in self.router.victims(n, entry, lower_only=True)) >= need

        return self.router.rank(entry, [n for n in self.router.feasible(entry) if fits(n)],
                                lower_only=True)

    def _idle_since(self, node: Node, entry: ModelEntry) -> float:
        """When the replica last served (or was sent) a request; 0 while it is busy."""
        m = node.loaded(entry.load_id)
        if m is None or m.busy or not m.last_used:
            return 0.0
        return max(m.last_used, self.router.routed_at(node.name, entry.load_id))

    # -- acting --------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[Action]:
        """Decide for every catalogue model; start an action for each that needs one and
        has none under way in this worker. Returns the actions started."""
        now = self.clock() if now is None else now
        started = []
        for entry in list(self.catalogue.entries.values()):
            with self._lock:
                busy = entry.id in self._acting
            action = self.decide(entry, now)
            if action is None or busy:
                continue
            thread = threading.Thread(target=self._act, args=(action,),
                                      name=f"scale:{entry.id}", daemon=True)
            with self._lock:
                self._acting[entry.id] = thread
            thread.start()
            started.append(action)
        return started

    def acting(self) -> list[str]:
        with self._lock:
            return list(self._acting)

    def delay(self, model: str) -> float:
        """This gateway's wait before it acts for `model`: a hash of its identity and the
        model, spread over one poll interval (gateways act one after another)."""
        h = hashlib.sha256(f"{self.identity}\x1f{model}".encode()).digest()
        return self.interval * int.from_bytes(h[:8], "big") / 2**64

    def _act(self, action: Action) -> None:
        try:
            time.sleep(self.delay(action.model))
            self._act_now(action)
        except Exception:  # a scale action must never take the worker down
            log.exception("scaling %s %s failed", action.model, action.action)
            self._event(action, action.node, "failed", "internal error (see the log)")
        finally:
            with self._lock:
                self._acting.pop(action.model, None)

    def _act_now(self, action: Action) -> None:
        entry = self.catalogue.entries.get(action.model)
        if entry is None:
            return  # gone from the catalogue (a reload)
        # Every neuron read again: another gateway may have acted while this one waited.
        self.fleet.poll_all()
        again = self.decide(entry, self.clock())
        if again is None or (again.action, again.node) != (action.action, action.node):
            self._event(action, action.node, "skipped",
                        "no longer needed after reading the neurons again")
            return
        if action.action == UP:
            self._scale_up(entry, action)
        else:
            self._scale_down(entry, action)

    def _scale_up(self, entry: ModelEntry, action: Action) -> None:
        errors = []
        for node in self.candidates(entry):
            try:
                self.router.load_on(node, entry, lower_only=True)
            except (ApiError, UpstreamError) as exc:
                errors.append(f"{node.name}: {exc}")
                log.info("scale-up of %s on %s failed: %s", entry.id, node.name, exc)
                continue
            log.info("scaled %s up to %d replicas (%s): loaded on %s", entry.id,
                     len(self.fleet.replicas(entry.load_id)), action.reason, node.name)
            self._event(action, node.name, "ok")
            return
        self._event(action, "", "failed", "; ".join(errors)[:300] or "no node has room")

    def _scale_down(self, entry: ModelEntry, action: Action) -> None:
        node = self.fleet.nodes.get(action.node)
        if node is None:
            return
        if self.router.unload(node, entry.load_id, reason="scaled_down"):
            log.info("scaled %s down to %d replicas: %s was idle %.0f s", entry.id,
                     len(self.fleet.replicas(entry.load_id)), node.name,
                     entry.scale_down_after_secs)
            self._event(action, node.name, "ok")
        else:
            self._event(action, node.name, "failed", "the neuron did not unload it")

    # -- what operators ask for ------------------------------------------------------------
    def add_replica(self, entry: ModelEntry) -> tuple[Node, bool]:
        """One more replica of `entry` on the best routable node without one, making room
        as a cold load does (the eviction strategy); returns (node, it was already there:
        another caller loaded it meanwhile)."""
        def free(n: Node) -> bool:
            m = n.models.get(entry.load_id)
            return n.routable and (m is None or m.status not in ("loaded", "loading"))

        nodes = [n for n in self.router.feasible(entry) if free(n)]
        if not nodes:
            where = [n.name for n in self.fleet.nodes.values()
                     if entry.load_id in n.models and n.models[entry.load_id].status in (
                         "loaded", "loading")]
            raise ApiError(f"{entry.id} is loaded or loading on every healthy node it is "
                           f"feasible on ({', '.join(where) or 'none'}); drain or free one",
                           status=409, code="no_node_without_replica")
        action = Action(entry.id, UP, OPERATOR)
        errors = []
        for node in self.router.rank(entry, nodes):
            try:
                self.router.load_on(node, entry)
            except (ApiError, UpstreamError) as exc:
                if getattr(exc, "code", "") != "insufficient_vram" and isinstance(
                        exc, ApiError):
                    self._event(action, node.name, "failed", exc.message[:300])
                    raise
                errors.append(f"{node.name}: {exc}")
                continue
            self._event(action, node.name, "ok")
            return node, False
        self._event(action, "", "failed", "; ".join(errors)[:300])
        raise Unavailable(f"no node could load {entry.id} now: {'; '.join(errors)}",
                          code="insufficient_vram", retry_after=5)

    def operator_did(self, model: str, action: str, node: str) -> None:
        """Record what an operator did through the admin API, among the scale events."""
        self._event(Action(model, action, OPERATOR), node, "ok")

    def view(self) -> dict[str, Any]:
        """The fleet as `cortex top` shows it: nodes, each catalogue model's replicas and
        loads, and this worker's scale events (newest last)."""
        now = self.clock()
        models = []
        for entry in self.catalogue.entries.values():
            on = {n.name: n.models[entry.load_id] for n in self.fleet.nodes.values()
                  if entry.load_id in n.models}
            since = self.saturated_since(entry.id)
            models.append({
                "id": entry.id, "load_id": entry.load_id,
                "replicas": sorted(n.name for n in self.fleet.replicas(entry.load_id)),
                "loading": sorted(k for k, m in on.items() if m.status == "loading"),
                "min": entry.replicas.min, "max": self.max_replicas(entry),
                "saturated_secs": round(now - since, 1) if since is not None else None,
                "scaling": entry.id in self.acting()})
        return {"worker": self.identity, "at": now,
                "nodes": [n.summary() for n in self.fleet.nodes.values()],
                "models": models,
                "scale_events": [e.describe() for e in list(self.events)[-50:]],
                **self.metrics.worker_view()}

    def _event(self, action: Action, node: str, result: str, detail: str = "") -> None:
        self.events.append(ScaleEvent(self.clock(), action.model, action.action,
                                      action.reason, node, result, detail))
        self.metrics.scale_events.labels(action.model, action.action, action.reason,
                                         result).inc()
