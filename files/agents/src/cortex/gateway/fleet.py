"""What the gateway knows about the fleet: a cache of the neurons' own reports.

Neurons are the source of truth. Every worker polls every neuron concurrently and keeps
the latest answer, so any number of workers and gateway hosts agree without a shared
store. A node is unhealthy after three consecutive failed polls and healthy again at the
first success.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cortex.core.recent_sessions import read_report
from cortex.gateway.config import NeuronEntry
from cortex.gateway.upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)

FAILURES_UNHEALTHY = 3


@dataclass
class ModelOnNode:
    id: str
    status: str  # loaded | loading | available
    vram_mb: int = 0
    in_flight: int = 0
    queue_depth: int = 0
    last_used: float = 0.0
    tok_s_prefill: float = 0.0
    tok_s_decode: float = 0.0
    rejections: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    slots: int = 0  # sequences it decodes at once (0: the neuron did not say)
    capacity: int = 0  # running + queued at which the neuron refuses more (0: not said)
    queue_wait: float = 0.0  # seconds its oldest queued request has waited
    # Sessions it served lately: tag -> when (time.time()), as its neuron listed them
    # (core.recent_sessions): where affinity sends their next turns.
    sessions: dict[str, float] = field(default_factory=dict)

    @property
    def busy(self) -> int:
        return self.in_flight + self.queue_depth

    def summary(self) -> dict[str, Any]:
        out = {"id": self.id, "status": self.status, "in_flight": self.in_flight,
               "queue_depth": self.queue_depth, "vram_mb": self.vram_mb,
               "last_used": self.last_used, "slots": self.slots,
               "queue_wait_secs": self.queue_wait}
        if self.status == "loading" and self.info.get("progress"):
            out["progress"] = self.info["progress"]  # the neuron's own report
        return out

    @property
    def saturated(self) -> bool:
        """Every slot busy and requests waiting for one: another replica would serve
        them now."""
        return bool(self.slots) and self.in_flight >= self.slots and self.queue_depth > 0


@dataclass
class Node:
    name: str
    endpoint: str
    healthy: bool = False
    polled: bool = False  # at least one poll finished (either way)
    failures: int = 0
    last_error: str = ""
    drained: bool = False
    devices: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, ModelOnNode] = field(default_factory=dict)
    activation: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # /health's session cache figures
    prompt_tokens: int = 0  # since the neuron started, all models: its cache's hit ratio
    cached_tokens: int = 0
    last_ok: float = 0.0
    counted_at: float = 0.0  # when the poll whose busy counts `models` holds began
    # Polls overlap (the poller's and a refresh after a load): the one started last wins.
    polls_started: int = 0
    applied_poll: int = 0

    @property
    def vram_free_mb(self) -> int:
        return min((d.get("vram_free_mb", 0) for d in self.devices), default=0)

    def loaded(self, model_id: str) -> ModelOnNode | None:
        m = self.models.get(model_id)
        return m if m is not None and m.status == "loaded" else None

    @property
    def routable(self) -> bool:
        return self.healthy and not self.drained

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "endpoint": self.endpoint, "healthy": self.healthy,
            "drained": self.drained, "failures": self.failures, "last_error": self.last_error,
            "devices": self.devices, "activation": self.activation.get("state"),
            "models": [m.summary() for m in self.models.values()],
        }


class Fleet:
    def __init__(self, neurons: list[NeuronEntry], upstream: Upstream,
                 interval: float) -> None:
        self.nodes = {n.name: Node(n.name, n.endpoint) for n in neurons}
        self.upstream = upstream
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.changed = threading.Condition()

    # -- polling ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_all()
            except Exception:  # the poller must outlive anything one round does
                log.exception("fleet poll failed")
            self._stop.wait(self.interval)

    def poll_all(self) -> None:
        """Poll every neuron at once; return when all have answered or timed out."""
        threads = [threading.Thread(target=self.poll, args=(n,), daemon=True)
                   for n in self.nodes.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self.changed:
            self.changed.notify_all()

    def poll(self, node: Node) -> None:
        node.polls_started += 1
        seq, started = node.polls_started, time.time()
        try:
            health = self.upstream.get_json(f"{node.endpoint}/health")
            heard = time.time()  # (what its session list's ages count back from)
            models = self.upstream.get_json(f"{node.endpoint}/models")
            self.apply(node, health, models, seq, started, heard)
            return
        except (UpstreamError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # A 200 that is not the neuron API (garbage, a proxy's page) is a failed poll.
            node.failures += 1
            node.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if node.healthy and node.failures >= FAILURES_UNHEALTHY:
                log.warning("neuron %s is unhealthy: %s", node.name, exc)
            node.healthy = node.healthy and node.failures < FAILURES_UNHEALTHY
            node.polled = True

    def apply(self, node: Node, health: dict, models: list, seq: int,
              started: float = 0.0, heard: float = 0.0) -> None:
        """Take a poll's answers; raises (changing nothing) if they are not the neuron API."""
        if not isinstance(health, dict) or not isinstance(models, list):
            raise ValueError("the answer is not the neuron API (/health must be an object, "
                             "/models a list)")
        live = {m["id"]: m for m in health.get("models", [])}
        fresh: dict[str, ModelOnNode] = {}
        now = heard or time.time()
        for m in models:
            h = live.get(m["id"], {})
            fresh[str(m["id"])] = ModelOnNode(
                id=str(m["id"]), status=str(m.get("status", "loaded")),
                vram_mb=int(m.get("vram_used_mb", 0)),
                in_flight=int(h.get("in_flight", 0)), queue_depth=int(h.get("queue_depth", 0)),
                last_used=float(h.get("last_used", 0.0)),
                tok_s_prefill=float(h.get("tok_s_prefill", 0.0)),
                tok_s_decode=float(h.get("tok_s_decode", 0.0)),
                rejections={str(k): int(v) for k, v in h.get("rejections", {}).items()},
                sessions=read_report(h.get("sessions"), now), info=m, **_admission(h))
        devices, activation = health.get("devices", []), health.get("activation", {})
        if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices) \
                or not isinstance(activation, dict):
            raise ValueError("devices must be a list of objects, activation an object")
        if seq < node.applied_poll:
            return  # older than what the node already shows
        node.applied_poll = seq
        if not node.healthy and node.polled:
            log.info("neuron %s is healthy", node.name)
        node.models = fresh
        node.counted_at = started  # (InFlight.load adds only what was sent after it)
        node.devices = devices
        node.activation = activation
        cache = health.get("cache")
        node.cache = cache if isinstance(cache, dict) else {}
        node.prompt_tokens = sum(int(h.get("prompt_tokens_total", 0)) for h in live.values())
        node.cached_tokens = sum(int(h.get("cached_tokens_total", 0)) for h in live.values())
        node.drained = bool(health.get("drained"))
        node.healthy = health.get("status", "ok") == "ok"
        node.failures = 0
        node.last_error = ""
        node.polled = True
        node.last_ok = time.time()

    def refresh(self, node: Node) -> None:
        """Re-read one neuron now (after a load or an unload we triggered)."""
        self.poll(node)
        with self.changed:
            self.changed.notify_all()

    def wait_first_poll(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(n.polled for n in self.nodes.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.changed.wait(left)

    # -- views -----------------------------------------------------------------------------
    @property
    def healthy_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.healthy]

    def replicas(self, model_id: str) -> list[Node]:
        """The nodes a request for `model_id` may go to now: routable, the model loaded."""
        return [n for n in self.nodes.values() if n.routable and n.loaded(model_id)]


def _admission(h: dict) -> dict[str, Any]:
    """A model's slots (those admission lets run at once), capacity and queue wait from its
    /health entry (absent: 0)."""
    slots = h.get("slots")
    total = int(slots.get("total", 0)) if isinstance(slots, dict) else 0
    running = min(int(h.get("max_in_flight") or total), total) if total else 0
    queue = h.get("max_queue_depth")
    return {"slots": running,
            "capacity": running + int(queue) if queue is not None and running else 0,
            "queue_wait": float(h.get("queue_wait_secs", 0.0))}
