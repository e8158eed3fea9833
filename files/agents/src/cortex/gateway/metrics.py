"""Gateway metrics (names: docs/api.md, "Gateway metrics"); multiprocess-safe under gunicorn.

Counters and histograms live in each worker (prometheus-client's multiprocess mode adds
them up at scrape time). The per-node gauges are re-exported from the neurons' own
/health as last polled (one poller in the process serving them, so never double-counted
across workers, and never a neuron call per scrape).

What every request changes goes through `Buffer`: kept in the worker and added to the
shared values by `flush` (once a second, before this registry is read, and when a worker
exits). A multiprocess value takes a lock and writes its file on each change; a relayed
request made 14 of them, ~9% of a gateway worker's CPU (py-spy under
bench/gateway_overhead.py's throughput phase). A scrape of the metrics port (the master
reading the workers' files) may be up to a second behind.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cortex.gateway.internals import observe_many

if TYPE_CHECKING:
    from cortex.gateway.catalogue import Catalogue
    from cortex.gateway.fleet import Fleet

log = logging.getLogger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_TOK_S = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


FLUSH_SECS = 1.0


class Buffer(Collector):
    """Changes to metric children, queued here (an append: atomic under the GIL, no lock)
    and applied by `flush`. Registered first in its registry, it flushes before the
    registry's metrics are collected."""

    def __init__(self) -> None:
        self._changes: deque[tuple[Any, float]] = deque()

    def counter(self, child: Any) -> BufferedCounter:
        return BufferedCounter(child, self._changes.append)

    def histogram(self, child: Any) -> BufferedHistogram:
        return BufferedHistogram(child, self._changes.append)

    def flush(self) -> None:
        """Apply what is queued: one change a counter, one a histogram bucket and sum.
        Safe from any thread (each change is taken off the queue once)."""
        totals: dict[Any, float] = {}
        observed: dict[BufferedHistogram, list[float]] = {}
        take = self._changes.popleft
        while True:
            try:
                target, amount = take()
            except IndexError:
                break
            if isinstance(target, BufferedHistogram):
                observed.setdefault(target, []).append(amount)
            else:
                totals[target] = totals.get(target, 0.0) + amount
        for child, amount in totals.items():
            child.inc(amount)
        for histogram, values in observed.items():
            histogram.apply(values)

    def collect(self) -> Iterator:
        self.flush()
        return iter(())

    def flush_every(self, secs: float, stop: threading.Event) -> None:
        def run() -> None:
            while not stop.wait(secs):
                try:
                    self.flush()
                except Exception:  # the next flush tries again; the queue must not grow
                    log.exception("flushing the gateway's metrics failed")
            self.flush()

        threading.Thread(target=run, name="metrics-flush", daemon=True).start()


@dataclass(frozen=True, slots=True)
class BufferedCounter:
    child: Any
    put: Any  # Buffer's queue.append

    def inc(self, amount: float = 1) -> None:
        self.put((self.child, amount))


class BufferedHistogram:
    __slots__ = ("apply", "child", "put")

    def __init__(self, child: Any, put: Any) -> None:
        self.child, self.put = child, put
        self.apply = observe_many(child)  # no public call adds many observations

    def observe(self, amount: float) -> None:
        self.put((self, amount))


@dataclass(frozen=True, slots=True)
class TargetMetrics:
    """The labelled children for one (model, node): looked up once, not per request."""

    requests: Any
    duration: Any
    ttft: Any
    tok_s: Any
    prompt_tokens: Any
    completion_tokens: Any


@dataclass(frozen=True, slots=True)
class KeyMetrics:
    spend: Any
    prompt: Any
    completion: Any


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.buffer = Buffer()
        r.register(self.buffer)  # first: a collection flushes before it reads
        mn = ["model", "node"]
        self.requests = Counter("cortex_requests", "Requests routed", mn, registry=r)
        self.errors = Counter("cortex_request_errors", "Requests that failed", [*mn, "code"],
                              registry=r)
        self.cold_starts = Counter("cortex_cold_starts", "Loads triggered by requests", mn,
                                   registry=r)
        self.unwanted_loads = Counter(
            "cortex_unwanted_loads", "Cold loads that finished after every request waiting "
            "on them had gone (their clients gave up)", mn, registry=r)
        self.evictions = Counter("cortex_evictions", "Models unloaded to make room or when idle",
                                 [*mn, "reason"], registry=r)
        self.prompt_tokens = Counter("cortex_prompt_tokens", "Prompt tokens", mn, registry=r)
        self.completion_tokens = Counter("cortex_completion_tokens", "Completion tokens", mn,
                                         registry=r)
        self.duration = Histogram("cortex_request_duration_seconds", "Request duration", mn,
                                  buckets=_SECONDS, registry=r)
        self.ttft = Histogram("cortex_time_to_first_token_seconds",
                              "Time to the first upstream chunk", mn, buckets=_SECONDS,
                              registry=r)
        self.tok_s = Histogram("cortex_tokens_per_second", "Completion tokens per second", mn,
                               buckets=_TOK_S, registry=r)
        self.overhead = Histogram("cortex_gateway_overhead_seconds",
                                  "Time the gateway itself adds (routing, auth, relaying)",
                                  ["endpoint"], buckets=_OVERHEAD, registry=r)
        self.scale_events = Counter("cortex_scale_events", "Replicas added or removed by the "
                                    "scaler, by reason and result",
                                    ["model", "action", "reason", "result"], registry=r)
        self.routed = Counter(
            "cortex_routing", "Requests sent to a replica, by the rule that chose it: "
            "affinity, prefix, spill (the ones before refused as full), least_busy, cold (a "
            "cold load made it)", ["model", "reason"], registry=r)
        self.all_full = Counter("cortex_replicas_full", "Requests refused because every "
                                "replica of the model was full", ["model"], registry=r)
        self.cached_tokens = Counter("cortex_prompt_cached_tokens", "Prompt tokens the "
                                     "neuron took from its cache (usage.prompt_tokens_details"
                                     ".cached_tokens)", mn, registry=r)
        ak = ["account", "key"]
        self.spend = Counter("cortex_spend_tokens", "Tokens spent per key", ak, registry=r)
        self.spend_prompt = Counter("cortex_spend_prompt_tokens", "Prompt tokens per key", ak,
                                    registry=r)
        self.spend_completion = Counter("cortex_spend_completion_tokens",
                                        "Completion tokens per key", ak, registry=r)

        # prometheus-client's labels() costs ~7 us a call (locks, validation); the proxy
        # needs ten of them a request, so it keeps the children it has used.
        self._targets: dict[tuple[str, str], TargetMetrics] = {}
        self._keys: dict[tuple[str, str], KeyMetrics] = {}
        self._overhead: dict[str, Any] = {}
        self._routed: dict[tuple[str, str], Any] = {}
        self._cached: dict[tuple[str, str], Any] = {}
        # This worker's own tallies beside Prometheus' (which adds up every worker's), for
        # `cortex top`: requests by routing reason; prompt and cached tokens.
        self.worker_routing: dict[str, int] = {}
        self.worker_cache = [0, 0]

    def target(self, model: str, node: str) -> TargetMetrics:
        t = self._targets.get((model, node))
        if t is None:
            b = self.buffer
            t = self._targets[(model, node)] = TargetMetrics(
                b.counter(self.requests.labels(model, node)),
                *(b.histogram(h.labels(model, node)) for h in (self.duration, self.ttft,
                                                                 self.tok_s)),
                *(b.counter(c.labels(model, node)) for c in (self.prompt_tokens,
                                                             self.completion_tokens)))
        return t

    def key(self, account: str, key: str) -> KeyMetrics:
        k = self._keys.get((account, key))
        if k is None:
            k = self._keys[(account, key)] = KeyMetrics(*(
                self.buffer.counter(m.labels(account, key))
                for m in (self.spend, self.spend_prompt, self.spend_completion)))
        return k

    def overhead_of(self, endpoint: str) -> Any:
        h = self._overhead.get(endpoint)
        if h is None:
            h = self._overhead[endpoint] = self.buffer.histogram(
                self.overhead.labels(endpoint))
        return h

    def routing(self, model: str, reason: str) -> Any:
        self.worker_routing[reason] = self.worker_routing.get(reason, 0) + 1
        c = self._routed.get((model, reason))
        if c is None:
            c = self._routed[(model, reason)] = self.buffer.counter(
                self.routed.labels(model, reason))
        return c

    def cache_used(self, model: str, node: str, prompt: int, cached: int) -> None:
        """A reply's usage: `cached` of its `prompt` tokens came from the neuron's cache."""
        if cached:
            c = self._cached.get((model, node))
            if c is None:
                c = self._cached[(model, node)] = self.buffer.counter(
                    self.cached_tokens.labels(model, node))
            c.inc(cached)
        self.worker_cache[0] += prompt
        self.worker_cache[1] += cached

    def worker_view(self) -> dict[str, Any]:
        """This worker's routing counts and cache hit ratio (what `cortex top` shows)."""
        prompt, cached = self.worker_cache
        return {"routing": dict(self.worker_routing),
                "cache": {"prompt_tokens": prompt, "cached_tokens": cached,
                          "hit_ratio": round(cached / prompt, 4) if prompt else None}}

    def replicas_full(self, model: str) -> Any:
        return self.all_full.labels(model)  # (rare: not worth a buffered child)

    def flush(self) -> None:
        self.buffer.flush()


class FleetCollector(Collector):
    """Per-node gauges re-exported from the neurons' /health."""

    def __init__(self, fleet: Fleet, catalogue: Catalogue | None = None) -> None:
        # The fleet's last poll, never a poll per scrape: scrapes must not become neuron load.
        self.fleet = fleet
        self.catalogue = catalogue  # to label models with the ids clients use

    def _public(self, model_id: str) -> str:
        entry = self.catalogue.by_load_id(model_id) if self.catalogue else None
        return entry.id if entry else model_id

    def _replicas(self) -> dict[str, tuple[int, int]]:
        """Per model (as clients name it): replicas serving, replicas loading; catalogue
        models with none show 0."""
        out = {e.id: (0, 0) for e in self.catalogue.entries.values()} if self.catalogue else {}
        for node in self.fleet.nodes.values():
            for m in node.models.values():
                serving, loads = m.status == "loaded" and node.routable, m.status == "loading"
                if serving or loads:
                    n, n_loading = out.get(self._public(m.id), (0, 0))
                    out[self._public(m.id)] = (n + serving, n_loading + loads)
        return out

    def collect(self) -> Iterator:
        nm = ["node", "model"]
        fam = {
            "in_flight": GaugeMetricFamily("cortex_model_in_flight", "Requests generating",
                                           labels=nm),
            "queue_depth": GaugeMetricFamily("cortex_model_queue_depth", "Requests queued",
                                             labels=nm),
            "tok_s_prefill": GaugeMetricFamily("cortex_model_tok_s_prefill",
                                               "Recent prefill speed", labels=nm),
            "tok_s_decode": GaugeMetricFamily("cortex_model_tok_s_decode", "Recent decode speed",
                                              labels=nm),
        }
        rejections = CounterMetricFamily("cortex_model_rejections", "Neuron admission refusals",
                                         labels=[*nm, "reason"])
        replicas = GaugeMetricFamily("cortex_model_replicas", "Healthy, undrained nodes with "
                                     "the model loaded", labels=["model"])
        loading = GaugeMetricFamily("cortex_model_replicas_loading", "Nodes loading the model",
                                    labels=["model"])
        up = GaugeMetricFamily("cortex_node_up", "1 when the neuron is healthy", labels=["node"])
        drained = GaugeMetricFamily("cortex_node_drained", "1 when the node is drained",
                                    labels=["node"])
        dev = {k: GaugeMetricFamily(f"cortex_device_{k}", f"Device {k}",
                                    labels=["node", "device"])
               for k in ("vram_used_mb", "vram_free_mb", "utilization_pct", "temp_c")}
        for node in self.fleet.nodes.values():
            up.add_metric([node.name], 1.0 if node.healthy else 0.0)
            drained.add_metric([node.name], 1.0 if node.drained else 0.0)
            for d in node.devices:
                for k, g in dev.items():
                    if d.get(k) is not None:
                        g.add_metric([node.name, str(d.get("index", 0))], float(d[k]))
            for m in node.models.values():
                if m.status != "loaded":
                    continue
                model = self._public(m.id)
                for k, g in fam.items():
                    g.add_metric([node.name, model], float(getattr(m, k)))
                for reason, count in m.rejections.items():
                    rejections.add_metric([node.name, model, reason], float(count))
        for model, (n, n_loading) in sorted(self._replicas().items()):
            replicas.add_metric([model], float(n))
            loading.add_metric([model], float(n_loading))
        yield from fam.values()
        yield rejections
        yield replicas
        yield loading
        yield up
        yield drained
        yield from dev.values()
