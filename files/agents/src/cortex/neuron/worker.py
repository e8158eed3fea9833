"""One generation thread per loaded model, fed by a bounded queue (admission).

HTTP threads never run inference: they submit a Job and read its events. The queue is
bounded (max_queue_depth), each principal may hold only a few places
(max_per_principal), and a job that waits longer than max_wait_secs gives up with a 503.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cortex.core.errors import ApiError, TooManyRequests, Unavailable
from cortex.neuron.config import AdmissionConfig
from cortex.neuron.engines import GenerationRequest, LoadedModel
from cortex.neuron.textstream import TextStream

log = logging.getLogger(__name__)


@dataclass
class Job:
    request: GenerationRequest
    stop: list[str]
    principal: str = ""
    enqueued_at: float = field(default_factory=time.monotonic)
    # Events: ("start", cached_tokens) ("text", str) ("done", summary) ("error", ApiError)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    started: threading.Event = field(default_factory=threading.Event)
    # Why the neuron (not the client) cancelled it: sent as an error, never as a clean end.
    abort: ApiError | None = None

    def cancel(self, abort: ApiError | None = None) -> None:
        self.abort = self.abort or abort
        self.request.cancel.set()

    @property
    def cancelled(self) -> bool:
        return self.request.cancel.is_set()


class Stats:
    """Per-model figures for /health (an exponential moving average of recent requests)."""

    def __init__(self) -> None:
        self.tok_s_prefill = 0.0
        self.tok_s_decode = 0.0
        self.last_used = 0.0
        self.requests = 0
        self.rejections: dict[str, int] = {}  # by reason, since the model was loaded

    def record(self, prefill_tokens: int, prefill_s: float, decode_tokens: int,
               decode_s: float) -> None:
        a = 0.3 if self.requests else 1.0
        if prefill_s > 0 and prefill_tokens:
            self.tok_s_prefill += a * (prefill_tokens / prefill_s - self.tok_s_prefill)
        if decode_s > 0 and decode_tokens > 1:
            self.tok_s_decode += a * ((decode_tokens - 1) / decode_s - self.tok_s_decode)
        self.requests += 1


class ModelWorker:
    def __init__(self, model_id: str, model: LoadedModel, limits: AdmissionConfig,
                 metrics: Any) -> None:
        self.model_id = model_id
        self.model = model
        self.limits = limits
        self.metrics = metrics
        self.stats = Stats()
        self.stats.last_used = time.time()
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"gen:{model_id}", daemon=True)
        self._thread.start()

    # -- admission (HTTP threads) ------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return 1 if self._running is not None else 0

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise Unavailable(f"model {self.model_id} is being unloaded",
                                  code="model_unloading", retry_after=2)
            if self._running is not None and len(self._queue) >= self.limits.max_queue_depth:
                self.reject("queue_full")
                raise Unavailable(
                    f"model {self.model_id} is busy: {len(self._queue)} requests queued "
                    f"(max_queue_depth={self.limits.max_queue_depth}); retry shortly",
                    code="rate_limit_exceeded", retry_after=self._retry_after())
            if job.principal:
                held = sum(1 for j in self._jobs() if j.principal == job.principal)
                if held >= self.limits.max_per_principal:
                    self.reject("per_principal")
                    raise TooManyRequests(
                        f"account {job.principal!r} already has {held} requests on "
                        f"{self.model_id} (max_per_principal={self.limits.max_per_principal})",
                        code="rate_limit_exceeded", retry_after=1)
            self._queue.append(job)
            self.metrics.queue_depth.labels(self.model_id).set(len(self._queue))
            self._cond.notify()

    def _jobs(self) -> list[Job]:
        return ([self._running] if self._running else []) + list(self._queue)

    def reject(self, reason: str) -> None:
        self.metrics.rejections.labels(self.model_id, reason).inc()
        self.stats.rejections[reason] = self.stats.rejections.get(reason, 0) + 1

    def _retry_after(self) -> int:
        per_job = 2.0
        return max(1, round(per_job * (1 + len(self._queue)) / max(1, self.limits.max_in_flight)))

    def withdraw(self, job: Job) -> bool:
        """Take a job that has not started out of the queue (client left, or waited too long)."""
        job.cancel()
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
            self.metrics.queue_depth.labels(self.model_id).set(len(self._queue))
            return True

    def close(self, reason: ApiError) -> None:
        """Stop taking work, fail queued jobs with `reason`, cancel the running one, join."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            if self._running is not None:
                self._running.cancel(reason)
            self._cond.notify_all()
        for job in pending:
            job.cancel()
            job.events.put(("error", reason))
        self._thread.join(timeout=30)

    # -- the generation thread ---------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                self.metrics.queue_depth.labels(self.model_id).set(len(self._queue))
                if job.cancelled:
                    continue
                self._running = job
                self.metrics.in_flight.labels(self.model_id).set(1)
            try:
                self._run(job)
            except Exception as exc:  # the engine failed: the request fails, the model stays
                log.exception("generation failed on %s", self.model_id)
                job.events.put(("error", ApiError(f"generation failed: {exc}",
                                                  code="generation_failed")))
            finally:
                with self._cond:
                    self._running = None
                self.metrics.in_flight.labels(self.model_id).set(0)
                self.stats.last_used = time.time()

    def _run(self, job: Job) -> None:
        req = job.request
        started = time.monotonic()
        self.metrics.queue_wait.labels(self.model_id).observe(started - job.enqueued_at)
        job.started.set()
        text = TextStream(job.stop)
        produced = 0
        first_at: float | None = None
        finish = "length"
        for ev in self.model.generate(req):
            if first_at is None:
                first_at = time.monotonic()
                job.events.put(("start", self.model.cached_tokens))
            if ev.eog:
                finish = "stop"
                break
            produced += 1
            delta = text.feed(ev.piece)
            if delta:
                job.events.put(("text", delta))
            if text.stopped_by is not None:
                finish = "stop"
                break
        else:
            if req.cancel.is_set():
                finish = "cancelled"
        if job.abort is not None:
            job.events.put(("error", job.abort))
            return
        tail = text.flush()
        if tail:
            job.events.put(("text", tail))
        if first_at is None:  # nothing was generated (cancelled before the first token)
            first_at = time.monotonic()
            job.events.put(("start", self.model.cached_tokens))
        done = time.monotonic()
        prefill_tokens = len(req.prompt_tokens) - self.model.cached_tokens
        self.stats.record(prefill_tokens, first_at - started, produced, done - first_at)
        self.metrics.observe_generation(self.model_id, prompt=len(req.prompt_tokens),
                                        completion=produced, ttft=first_at - job.enqueued_at,
                                        decode_s=done - first_at)
        job.events.put(("done", {
            "finish_reason": finish, "stop": text.stopped_by, "completion_tokens": produced,
            "prompt_tokens": len(req.prompt_tokens), "cached_tokens": self.model.cached_tokens,
            "prefill_ms": round((first_at - started) * 1000, 2),
            "decode_ms": round((done - first_at) * 1000, 2), "prefill_tokens": prefill_tokens,
            "queue_ms": round((started - job.enqueued_at) * 1000, 2),
        }))
