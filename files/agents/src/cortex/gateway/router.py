"""Where a request goes: a loaded replica, or a node that loads the model (after evicting).

The rule (docs/architecture.md): (1) loaded → least in_flight + queue_depth, ties by name;
(2) recovering → 503; (3) catalogued → rank feasible nodes (pinned > fits free > fits after
eviction > most free > name), evict, load; (4) otherwise 404. Concurrent requests for one
cold model share one load: the first plans and loads, the others wait for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cortex.core.errors import ApiError, NotFound, Unavailable
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.config import ModelEntry
from cortex.gateway.fleet import Fleet, ModelOnNode, Node
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.upstream import UpstreamError, neuron_error

log = logging.getLogger(__name__)


@dataclass
class Target:
    node: Node
    model_id: str  # the id the neuron knows (load id)
    public_id: str  # what the client asked for, resolved through aliases
    entry: ModelEntry | None
    cold: bool = False


class Router:
    def __init__(self, fleet: Fleet, catalogue: Catalogue, metrics: GatewayMetrics, *,
                 strategy: str, load_timeout: float, defrag_after: int = 0) -> None:
        self.fleet = fleet
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

    # -- choosing ------------------------------------------------------------------------
    def route(self, name: str, exclude: set[str] = frozenset(), *, counted: bool = True
              ) -> Target:
        """Where to send a request for `name`, cold-loading it if need be. `counted`: the
        caller is the request itself (not a helper thread that counts its caller with
        `waiting_for`), and is waiting for the model until this returns."""
        entry = self.catalogue.resolve(name)
        model_id = entry.load_id if entry else name
        public = entry.id if entry else name
        loaded = self._least_busy(model_id, public, entry, exclude)
        if loaded is not None or not counted:  # (the common case: served at once)
            return loaded or self._route(name, entry, model_id, public, exclude)
        with self.waiting_for(model_id):
            return self._route(name, entry, model_id, public, exclude)

    def _least_busy(self, model_id: str, public: str, entry: ModelEntry | None,
                    exclude: set[str]) -> Target | None:
        # Fleet.replicas' rule (routable, the model loaded) in one pass, as this runs for
        # every request: 1.0 us over two replicas, where its list and a min() took 1.7.
        best, node = None, None
        for n in self.fleet.nodes.values():
            m = n.loaded(model_id)
            if m is not None and n.routable and n.name not in exclude and (
                    best is None or (m.busy, n.name) < best):
                best, node = (m.busy, n.name), n
        return None if node is None else self._picked(Target(node, model_id, public, entry))

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

    def _route(self, name: str, entry: ModelEntry | None, model_id: str, public: str,
               exclude: set[str]) -> Target:
        deadline = time.monotonic() + self.load_timeout
        while True:
            target = self._least_busy(model_id, public, entry, exclude)
            if target is not None:
                return target
            if entry is None:
                self._not_found(name)
            with self._lock:
                event = self._loads.get(model_id)
                leader = event is None
                if leader:
                    event = self._loads[model_id] = threading.Event()
            if leader:
                try:
                    return self._picked(self._cold_load(entry, exclude))
                finally:
                    with self._lock:
                        self._loads.pop(model_id, None)
                    event.set()
            if not event.wait(max(0.0, deadline - time.monotonic())):
                raise Unavailable(f"{public} is still loading; retry shortly",
                                  code="service_unavailable", retry_after=5)
            # The leader finished (or failed): look again; a failure makes us lead next.

    def _picked(self, target: Target) -> Target:
        # Counts as use for the idle reaper before the neuron has even seen the request.
        self._routed[(target.node.name, target.model_id)] = time.time()
        return target

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

    def _cold_load(self, entry: ModelEntry, exclude: set[str]) -> Target:
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
                self._load_on(node, entry)
            except ApiError as exc:
                if exc.code == "insufficient_vram":
                    log.info("%s refused %s: %s; trying the next node", node.name, entry.id,
                             exc.message)
                    continue
                raise
            except UpstreamError as exc:
                log.warning("load of %s on %s failed: %s", entry.id, node.name, exc)
                continue
            return Target(node, entry.load_id, entry.id, entry, cold=True)
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
            if m.status != "loaded" or m.busy or m.id == incoming.load_id:
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

    def _load_on(self, node: Node, entry: ModelEntry, *, lower_only: bool = False) -> None:
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
        return (m.status == "loaded" and ttl > 0 and not m.busy and bool(m.last_used)
                and now - last > ttl and not (entry and self._at_min(entry)))

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
