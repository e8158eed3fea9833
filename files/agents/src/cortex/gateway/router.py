"""Cold loads, eviction and the idle reaper.

Which replica of a loaded model a request goes to is the relay's dispatch's
(relay/dispatch.py, asking the placement policy, placement.py). Here, a model loaded
nowhere: rank the feasible nodes (pinned > fits free > fits after eviction > most free >
name), evict, load (`Router.load`); recovering → 503; neither catalogued nor loaded → 404.
Concurrent requests for one cold model share one load: the first plans and loads, the
others wait for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Collection, Iterator

from cortex.core.errors import ApiError, NotFound, Unavailable
from cortex.gateway.catalogue import Catalogue, ModelRef
from cortex.gateway.config import ModelEntry
from cortex.gateway.fleet import Fleet, ModelOnNode, Node
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.placement import InFlight
from cortex.gateway.upstream import UpstreamError, neuron_error

log = logging.getLogger(__name__)


class Router:
    def __init__(self, fleet: Fleet, catalogue: Catalogue, metrics: GatewayMetrics, *,
                 strategy: str, load_timeout: float, defrag_after: int = 0,
                 in_flight: InFlight | None = None) -> None:
        self.fleet = fleet
        # What this worker has sent and not seen finish: a model with a request on its way
        # is no victim, whatever the last poll says (it may not have reached the neuron,
        # whose `if_idle` check cannot see it yet).
        self.in_flight = in_flight or InFlight()
        self.catalogue = catalogue
        self.metrics = metrics
        self.strategy = strategy
        self.load_timeout = load_timeout
        # [eviction] defrag_after_cycles: warn once a node has unloaded this many models
        # (through this worker), as long-lived GPU contexts fragment their memory.
        self.defrag_after = defrag_after
        self._unloads: dict[str, int] = {}  # node -> models this worker unloaded there
        self._loads: dict[str, threading.Event] = {}
        self._waiting: dict[str, int] = {}  # load id -> requests waiting for it to be served
        self._routed: dict[tuple[str, str], float] = {}  # (node, model) → last routed at
        self._lock = threading.Lock()

    # -- cold loads ----------------------------------------------------------------------
    def load(self, model: ModelRef, exclude: Collection[str] = frozenset(), *,
             counted: bool = True) -> Node | None:
        """Get `model` loaded on a node not in `exclude`, for a request that found no
        replica. Concurrent requests share one load: the first plans and loads (returning
        the node), the others wait for it and get None (look for a replica again; a load
        that failed makes the next caller lead). Raises 404 for a model neither catalogued
        nor loaded, 503 when no node can load it now. `counted`: the caller is the request
        itself (not a helper thread whose caller counts itself with `waiting_for`)."""
        if model.entry is None:
            self._not_found(model.name)
        if not counted:
            return self._load(model.entry, exclude)
        with self.waiting_for(model.load_id):
            return self._load(model.entry, exclude)

    @contextlib.contextmanager
    def waiting_for(self, model_id: str) -> Iterator[None]:
        """Count a request waiting for `model_id` while the block runs: a cold load that
        ends with nobody waiting is counted as unwanted."""
        with self._lock:
            self._waiting[model_id] = self._waiting.get(model_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._waiting.pop(model_id) - 1
                if left:
                    self._waiting[model_id] = left

    def _load(self, entry: ModelEntry, exclude: Collection[str]) -> Node | None:
        with self._lock:
            event = self._loads.get(entry.load_id)
            leader = event is None
            if leader:
                event = self._loads[entry.load_id] = threading.Event()
        if leader:
            try:
                if any(n.name not in exclude for n in self.fleet.replicas(entry.load_id)):
                    return None  # a load that ended since the caller looked
                return self._cold_load(entry, exclude)
            finally:
                with self._lock:
                    self._loads.pop(entry.load_id, None)
                event.set()
        if not event.wait(self.load_timeout):
            raise Unavailable(f"{entry.id} is still loading; retry shortly",
                              code="service_unavailable", retry_after=5)
        return None

    def routed(self, node: Node, load_id: str) -> None:
        """A request is on its way to `node`: use, for the idle reaper, before the neuron
        has even seen it."""
        self._routed[(node.name, load_id)] = time.time()

    def _not_found(self, name: str) -> None:
        known = sorted(self.catalogue.public_ids())
        raise NotFound(f"model {name!r} is not in the catalogue and not loaded on any node; "
                       f"known models: {', '.join(known) or 'none'}", code="model_not_found",
                       param="model")

    def feasible(self, entry: ModelEntry, nodes: list[Node] | None = None) -> list[Node]:
        out = []
        for n in nodes if nodes is not None else list(self.fleet.nodes.values()):
            if entry.pinned_on and n.name not in entry.pinned_on:
                continue
            big = [d for d in n.devices
                   if d.get("vram_total_mb", 0) >= (entry.min_device_vram_mb or 0)]
            if n.polled and n.devices and len(big) < entry.min_devices:
                continue
            out.append(n)
        return out

    def _cold_load(self, entry: ModelEntry, exclude: Collection[str]) -> Node:
        candidates = [n for n in self.feasible(entry) if n.name not in exclude]
        routable = [n for n in candidates if n.routable]
        if not routable:
            if not self.fleet.healthy_nodes:
                raise Unavailable("no healthy neurons in the fleet", code="service_unavailable",
                                  retry_after=5)
            if candidates:
                raise Unavailable(f"every node that can hold {entry.id} is unhealthy or "
                                  "drained", code="service_unavailable", retry_after=3)
            raise Unavailable(f"no node in the fleet can hold {entry.id} (pinned_on, "
                              "min_devices, min_device_vram_mb)", code="model_unservable",
                              retry_after=30)
        for node in self.rank(entry, routable):
            try:
                self.load_on(node, entry)
            except ApiError as exc:
                if exc.code == "insufficient_vram":
                    log.info("%s refused %s: %s; trying the next node", node.name, entry.id,
                             exc.message)
                    continue
                raise
            except UpstreamError as exc:
                log.warning("load of %s on %s failed: %s", entry.id, node.name, exc)
                continue
            return node
        raise Unavailable(f"no node could load {entry.id} now (not enough free memory after "
                          "eviction); retry shortly", code="insufficient_vram", retry_after=5)

    def rank(self, entry: ModelEntry, nodes: list[Node], *, lower_only: bool = False
             ) -> list[Node]:
        need = entry.vram_mb or 0

        def key(n: Node) -> tuple:
            free = n.vram_free_mb
            reclaim = sum(m.vram_mb for m in self.victims(n, entry, lower_only=lower_only))
            return (n.name not in entry.pinned_on, free < need, free + reclaim < need,
                    -free, n.name)

        return sorted(nodes, key=key)

    # -- evicting ------------------------------------------------------------------------
    def victims(self, node: Node, incoming: ModelEntry, *, lower_only: bool = False
                ) -> list[ModelOnNode]:
        """Models on `node` that may make room for `incoming`, least recently used first.
        `lower_only`: only models of a lower residency_priority, whatever the strategy
        (a replica added for load never pushes out an equal)."""
        out = []
        for m in node.models.values():
            if m.status != "loaded" or self._busy(node, m) or m.id == incoming.load_id:
                continue
            entry = self.catalogue.by_load_id(m.id)
            if entry is not None and node.name in entry.pinned_on:
                continue  # pinned models stay where they are pinned
            if entry is not None and self._at_min(entry):
                continue  # so do a model's last `replicas.min` replicas
            priority = entry.residency_priority if entry else 0
            if lower_only and priority >= incoming.residency_priority:
                continue
            if self.strategy == "priority" and priority > incoming.residency_priority:
                continue
            out.append(m)
        return sorted(out, key=lambda m: (m.last_used, m.id))

    def _at_min(self, entry: ModelEntry) -> bool:
        """The model has no more replicas than its `replicas.min`: none may go."""
        return bool(entry.replicas.min) and len(
            self.fleet.replicas(entry.load_id)) <= entry.replicas.min

    def load_on(self, node: Node, entry: ModelEntry, *, lower_only: bool = False) -> None:
        """Load `entry` on `node`, evicting what it may to make room (`lower_only`: only
        models of a lower priority, the scaler's rule); the neuron's refusal is raised."""
        need = entry.vram_mb or 0
        for attempt in range(8):
            if need and node.vram_free_mb < need:
                self._evict_for(node, entry, need, lower_only=lower_only)
            load = {"model_id": entry.load_id, "harness": entry.harness, "quant": entry.quant}
            if entry.chat_format:  # (families' change: the neuron reads calls this way)
                load["chat_format"] = entry.chat_format
            status, body = self.fleet.upstream.post_json(
                f"{node.endpoint}/models/load", load, read=self.load_timeout)
            if status == 200:
                self.metrics.cold_starts.labels(entry.id, node.name).inc()
                if not self._waiting.get(entry.load_id):
                    log.info("%s finished loading on %s after every request waiting for it "
                             "had gone", entry.id, node.name)
                    self.metrics.unwanted_loads.labels(entry.id, node.name).inc()
                self.fleet.refresh(node)
                return
            err = neuron_error(status, body, node.name)
            if err.code == "insufficient_vram" and attempt < 7:
                # The neuron knows the real need: make that much room, then try again.
                need = max(need, int(err.extra.get("need_mb", 0)))
                freed = self._evict_for(node, entry, need, lower_only=lower_only)
                if freed:
                    continue
            raise load_failed(err, node, entry)

    def _evict_for(self, node: Node, entry: ModelEntry, need: int, *,
                   lower_only: bool = False) -> int:
        self.fleet.refresh(node)
        free = node.vram_free_mb
        freed = 0
        for victim in self.victims(node, entry, lower_only=lower_only):
            if free + freed >= need:
                break
            if self.unload(node, victim.id, reason="evicted"):
                freed += victim.vram_mb
        return freed

    def unload(self, node: Node, model_id: str, reason: str) -> bool:
        """Unload `model_id` from `node` for an eviction or the idle reaper, only if the
        neuron finds it idle under its own lock (`if_idle`): the poll this decision rests
        on may be seconds old, and a request that started since must not be cut (the
        neuron answers 409 `model_busy`, and the model stays)."""
        try:
            status, _ = self.fleet.upstream.post_json(
                f"{node.endpoint}/models/unload", {"model_id": model_id, "if_idle": True},
                read=60)
        except UpstreamError as exc:
            log.warning("unload of %s on %s failed: %s", model_id, node.name, exc)
            return False
        if status == 409:
            log.info("%s on %s is in use: not %s", model_id, node.name, reason)
        if status == 200:
            log.info("%s %s on %s", reason, model_id, node.name)
            entry = self.catalogue.by_load_id(model_id)
            self.metrics.evictions.labels(entry.id if entry else model_id, node.name,
                                          reason).inc()
            self._count_unload(node.name)
        self.fleet.refresh(node)
        return status == 200

    def _count_unload(self, node: str) -> None:
        n = self._unloads[node] = self._unloads.get(node, 0) + 1
        if self.defrag_after and n % self.defrag_after == 0:
            log.warning("%s has unloaded %d models (seen by this gateway worker): its GPU "
                        "memory may be fragmented, leaving free memory no model fits in; "
                        "drain it and restart its neuron when convenient "
                        "([eviction] defrag_after_cycles = %d)", node, n, self.defrag_after)

    # -- idle TTL ------------------------------------------------------------------------
    def reap_idle(self, now: float | None = None) -> list[tuple[str, str]]:
        """Unload catalogue models idle longer than their keep_alive. Returns what went.

        The poll that says a model is idle may be seconds old: before unloading, the node
        is read again, and a model this gateway routed a request to within its keep_alive
        stays (the request may not have reached the neuron yet)."""
        now = now or time.time()
        gone = []
        for node in list(self.fleet.nodes.values()):
            if not node.healthy or not self._idle(node, now):
                continue
            self.fleet.refresh(node)
            for m in self._idle(node, now) if node.healthy else []:
                if self._idle_model(node, m, now) and self.unload(node, m.id, "idle"):
                    gone.append((node.name, m.id))
        return gone

    def _idle(self, node: Node, now: float) -> list[ModelOnNode]:
        return [m for m in list(node.models.values()) if self._idle_model(node, m, now)]

    def _idle_model(self, node: Node, m: ModelOnNode, now: float) -> bool:
        entry = self.catalogue.by_load_id(m.id)
        ttl = self.catalogue.keep_alive(entry) if entry else 0
        last = max(m.last_used, self._routed.get((node.name, m.id), 0.0))
        return (m.status == "loaded" and ttl > 0 and not self._busy(node, m)
                and bool(m.last_used)
                and now - last > ttl and not (entry and self._at_min(entry)))

    def _busy(self, node: Node, m: ModelOnNode) -> bool:
        return bool(m.busy or self.in_flight.of(node.name, m.id))

    def routed_at(self, node: str, model_id: str) -> float:
        """When this worker last sent a request for `model_id` to `node` (0: never)."""
        return self._routed.get((node, model_id), 0.0)


def load_failed(err: ApiError, node: Node, entry: ModelEntry) -> ApiError:
    """A load that failed on a node, as a client may see it: the model, the node and the
    kind of failure (code, status and fields kept). The neuron's own words (file paths,
    hub errors) go to the log; admins load through the admin API, which shows them."""
    log.warning("loading %s on %s failed: %s %s", entry.id, node.name, err.message,
                err.extra.get("detail", ""))
    keep = {k: v for k, v in err.extra.items() if k != "detail"}
    return ApiError(f"could not load {entry.id} on {node.name} ({err.code}); the gateway's "
                    "log has the details", code=err.code, status=err.status, type=err.type,
                    retry_after=err.retry_after, **keep)
