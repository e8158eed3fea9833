"""Prometheus metrics of one neuron (a registry per app, so tests can run many apps)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_TOK_S = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class NeuronMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        m = ["model"]
        self.requests = Counter("neuron_requests", "Inference requests by result",
                                ["model", "endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("neuron_prompt_tokens", "Prompt tokens processed", m,
                                     registry=r)
        self.completion_tokens = Counter("neuron_completion_tokens", "Tokens generated", m,
                                         registry=r)
        self.cached_tokens = Counter("neuron_cached_prompt_tokens",
                                     "Prompt tokens reused from a slot or the session cache "
                                     "(not prefilled)", m, registry=r)
        self.ttft = Histogram("neuron_time_to_first_token_seconds",
                              "From admission to the first generated token", m,
                              buckets=_LATENCY, registry=r)
        self.decode_tok_s = Histogram("neuron_decode_tokens_per_second",
                                      "Decode speed per request", m, buckets=_TOK_S, registry=r)
        self.queue_wait = Histogram("neuron_queue_wait_seconds",
                                    "Time a request waited for the model's generation thread",
                                    m, buckets=_LATENCY, registry=r)
        self.load_seconds = Histogram("neuron_model_load_seconds",
                                      "Model load duration (preflight, fetch, engine load)",
                                      ["model", "result"], buckets=_LATENCY, registry=r)
        self.in_flight = Gauge("neuron_model_in_flight", "Requests generating now", m,
                               registry=r)
        self.queue_depth = Gauge("neuron_model_queue_depth", "Requests waiting", m, registry=r)
        self.slots_total = Gauge("neuron_model_slots", "Sequences a model decodes at once", m,
                                 registry=r)
        self.batch_size = Histogram("neuron_batch_sequences",
                                    "Sequences in each decode step (continuous batching)", m,
                                    buckets=_BATCH, registry=r)
        self.decode_tok_s_aggregate = Gauge(
            "neuron_model_decode_tokens_per_second",
            "Tokens sampled per second, all sequences together (last 10 s)", m, registry=r)
        self.rejections = Counter("neuron_rejections", "Requests refused by admission",
                                  ["model", "reason"], registry=r)
        self.loaded = Gauge("neuron_model_loaded", "1 while a model is loaded", m, registry=r)
        # Per account a gateway named (X-Helexa-Account-Id; "" for direct callers): what the
        # neuron read and generated for it, to reconcile with the gateways' spend. Accounts
        # are the gateways' configured ones, a bounded set.
        self.account_tokens = Counter("neuron_account_tokens",
                                      "Tokens read (prompt) and generated (completion) per "
                                      "account", ["account", "kind"], registry=r)

    def watch_devices(self, snapshot: Callable[[], Sequence[Any]]) -> None:
        """Device memory gauges read from `snapshot()` (Device objects) at each scrape."""
        self.registry.register(_DeviceMemory(snapshot))

    def watch_sessions(self, cache: Any) -> None:
        """Export the session cache's figures (its snapshot, read at each collection)."""
        self.registry.register(_SessionCacheCollector(cache))

    def observe_generation(self, model: str, *, prompt: int, completion: int, ttft: float,
                           decode_s: float, account: str = "", cached: int = 0) -> None:
        self.account_usage(account, prompt, completion)
        self.prompt_tokens.labels(model).inc(prompt)
        self.cached_tokens.labels(model).inc(cached)
        self.completion_tokens.labels(model).inc(completion)
        self.ttft.labels(model).observe(ttft)
        if decode_s > 0 and completion > 1:
            self.decode_tok_s.labels(model).observe((completion - 1) / decode_s)

    def account_usage(self, account: str, prompt: int, completion: int) -> None:
        self.account_tokens.labels(account, "prompt").inc(prompt)
        self.account_tokens.labels(account, "completion").inc(completion)

    def totals(self, model: str) -> dict[str, int]:
        """Requests finished and tokens generated for `model` since this process began:
        gateways turn the change between two polls into the fleet's req/s and tok/s."""
        requests = sum(s.value for metric in self.requests.collect() for s in metric.samples
                       if s.name.endswith("_total") and s.labels.get("model") == model)
        def total(name: str) -> int:
            return int(self.registry.get_sample_value(name, {"model": model}) or 0)

        return {"requests_total": int(requests),
                "completion_tokens_total": total("neuron_completion_tokens_total"),
                "prompt_tokens_total": total("neuron_prompt_tokens_total"),
                "cached_tokens_total": total("neuron_cached_prompt_tokens_total")}

    def forget(self, model: str) -> None:
        """Drop a model's gauges when it is unloaded (counters keep their history)."""
        for g in (self.in_flight, self.queue_depth, self.slots_total,
                  self.decode_tok_s_aggregate):
            with contextlib.suppress(KeyError):
                g.remove(model)
        self.loaded.labels(model).set(0)


class _DeviceMemory:
    """neuron_device_vram_{used,free}_mb, read at scrape time: a GPU's figures change with
    other processes too, so there is no one place where they change to set them from."""

    def __init__(self, snapshot: Callable[[], Sequence[Any]]) -> None:
        self.snapshot = snapshot

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("neuron_device_vram_used_mb", "Device memory in use",
                                  labels=["device"]),
                GaugeMetricFamily("neuron_device_vram_free_mb", "Device memory free",
                                  labels=["device"]))

    def describe(self) -> Iterator[Metric]:
        yield from self._families()  # the names, so that the registry refuses a duplicate

    def collect(self) -> Iterator[Metric]:
        used, free = self._families()
        for d in self.snapshot():
            used.add_metric([str(d.index)], d.vram_used_mb)
            free.add_metric([str(d.index)], d.vram_free_mb)
        yield used
        yield free


class _SessionCacheCollector:
    """neuron_session_cache_*: the session cache's bytes and blocks per tier, and its
    lookups, hits, restores and evictions since the process began."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        snap = self.cache.snapshot()
        mib = 2**20
        tiers = [("ram", snap["ram"]), ("disk", snap["disk"])]
        used = GaugeMetricFamily("neuron_session_cache_bytes", "Bytes of cached KV blocks",
                                 labels=["tier"])
        budget = GaugeMetricFamily("neuron_session_cache_budget_bytes",
                                   "The session cache's budget", labels=["tier"])
        blocks = GaugeMetricFamily("neuron_session_cache_blocks", "Cached KV blocks",
                                   labels=["tier"])
        for tier, t in tiers:
            if t is not None:
                used.add_metric([tier], t["used_mb"] * mib)
                budget.add_metric([tier], t["budget_mb"] * mib)
                blocks.add_metric([tier], t["blocks"])
        yield from (used, budget, blocks)
        for name, key, doc in [
                ("lookups", "lookups", "Prompts looked up in the session cache"),
                ("hits", "hits", "Lookups that found blocks beyond what the slot held"),
                ("misses", "misses", "Lookups that found nothing more"),
                ("restores", "restores", "KV states restored into a slot"),
                ("restored_tokens", "restored_tokens", "Prompt tokens restored, not prefilled"),
                ("saved_blocks", "saved_blocks", "KV blocks saved from slots"),
                ("corrupt", "corrupt", "Disk blocks found short or damaged (each a miss)")]:
            yield CounterMetricFamily(f"neuron_session_cache_{name}", doc, snap[key])
        yield CounterMetricFamily("neuron_session_cache_restore_seconds",
                                  "Time spent restoring KV states",
                                  snap["restore_ms_total"] / 1000)
        ev = CounterMetricFamily("neuron_session_cache_evictions",
                                 "Blocks evicted (RAM: to disk where there is one)",
                                 labels=["tier"])
        for tier, n in snap["evictions"].items():
            ev.add_metric([tier], n)
        yield ev
