"""Continuous batching: one scheduler thread per loaded model, over the model's slots.

HTTP threads never run inference: they submit a Job and read its events. Each step the
scheduler admits queued jobs to free slots (the free slot whose cache shares the longest
prefix with the prompt), runs one batch holding every active sequence's next token and
prompt chunks of the new ones, and routes the sampled tokens. A sequence that ends (EOS,
stop string, max_tokens, client gone, error) frees its slot at once; the others go on.
Admission: in flight up to max_in_flight (default: the slot count), then a bounded queue
(max_queue_depth), a few places per principal (max_per_principal), max_wait_secs (503).
An idle model waits gather_ms for a burst's other requests, to prefill them in one step.
Embedding jobs share those limits and need no slot: one decode of the head job runs between
two steps, so an embedding batch holds the chat sequences up no longer than a prompt chunk.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cortex.core.errors import ApiError, BadRequest, TooManyRequests, Unavailable
from cortex.neuron.config import AdmissionConfig
from cortex.neuron.engines import GenerationRequest, LoadedModel
from cortex.neuron.engines.base import Sequence, TokenEvent
from cortex.neuron.textstream import TextStream

log = logging.getLogger(__name__)

RATE_WINDOW_SECS = 10.0  # aggregate decode tok/s is measured over this window


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


@dataclass(eq=False)
class EmbedJob:
    """Embeddings of `inputs` (token lists); events: ("done", vectors) or ("error", ApiError).

    The same shape as a Job where admission and waiting need it (principal, enqueued_at,
    events, started, cancel), so both go through one queue discipline and one waiter.
    """

    inputs: list[list[int]]
    principal: str = ""
    enqueued_at: float = field(default_factory=time.monotonic)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    started: threading.Event = field(default_factory=threading.Event)
    vectors: list[Any] = field(default_factory=list)  # of inputs[:len(vectors)], so far
    abort: ApiError | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self, abort: ApiError | None = None) -> None:
        self.abort = self.abort or abort
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


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


class _Run:
    """A job on a slot: its sequence and what has been produced so far."""

    def __init__(self, job: Job, slot: int) -> None:
        self.job = job
        self.slot = slot
        self.seq: Sequence | None = None
        self.text = TextStream(job.stop)
        self.produced = 0
        self.started = time.monotonic()
        self.first_at: float | None = None


class ModelScheduler:
    def __init__(self, model_id: str, model: LoadedModel, limits: AdmissionConfig,
                 metrics: Any) -> None:
        self.model_id = model_id
        self.model = model
        self.limits = limits
        self.metrics = metrics
        self.slots = model.n_slots
        self.max_in_flight = min(limits.max_in_flight or self.slots, self.slots)
        self.stats = Stats()
        self.stats.last_used = time.time()
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._active: dict[int, _Run] = {}  # by slot
        self.submitted_at = 0.0  # when a job last came (monotonic)
        self._embeds: deque[EmbedJob] = deque()
        self._embedding: EmbedJob | None = None  # the one being embedded, between steps
        self._slot_used = [0.0] * self.slots  # when each slot last ended (LRU among ties)
        self._rate: deque[tuple[float, float, int]] = deque()  # (step start, end, tokens)
        self._closed = False
        metrics.slots_total.labels(model_id).set(self.slots)
        metrics.decode_tok_s_aggregate.labels(model_id).set_function(self.decode_rate)
        self._thread = threading.Thread(target=self._loop, name=f"gen:{model_id}", daemon=True)
        self._thread.start()

    # -- admission (HTTP threads) ------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._active) + (self._embedding is not None)

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._embeds)

    @property
    def queue_wait(self) -> float:
        """Seconds the oldest queued request has waited (0 with none queued): a gateway
        scales a model out on this, with the queue's depth and the slots' use."""
        now, waited = time.monotonic(), 0.0
        for waiting in (self._queue, self._embeds):
            try:  # (read without the lock: the scheduler thread may take it meanwhile)
                waited = max(waited, now - waiting[0].enqueued_at)
            except IndexError:
                pass
        return waited

    def decode_rate(self) -> float:
        """Tokens sampled per second over the last RATE_WINDOW_SECS, all sequences together."""
        now = time.monotonic()
        with self._cond:
            while self._rate and self._rate[0][1] < now - RATE_WINDOW_SECS:
                self._rate.popleft()
            if not self._rate:
                return 0.0
            tokens = sum(n for _, _, n in self._rate)
            return tokens / max(now - self._rate[0][0], 1e-3)

    def submit(self, job: Job | EmbedJob) -> None:
        with self._cond:
            self.submitted_at = time.monotonic()  # (an if_idle unload reads it)
            if self._closed:
                raise Unavailable(f"model {self.model_id} is being unloaded",
                                  code="model_unloading", retry_after=2)
            if isinstance(job, EmbedJob):  # needs no slot: one may run as soon as none does
                waiting, full = self._embeds, len(self._embeds) >= (
                    self.limits.max_queue_depth + (self._embedding is None))
            else:
                if not self.slots:
                    raise BadRequest(f"model {self.model_id} is loaded for embeddings only; "
                                     "load it without embeddings_only to chat with it",
                                     code="model_embeddings_only", param="model")
                free = max(0, self.max_in_flight - len(self._active))
                waiting, full = self._queue, len(self._queue) >= (
                    self.limits.max_queue_depth + free)
            if full:
                self.reject("queue_full")
                raise Unavailable(
                    f"model {self.model_id} is busy: {self.in_flight} running, "
                    f"{self.queue_depth} queued (max_queue_depth="
                    f"{self.limits.max_queue_depth}); retry shortly",
                    code="rate_limit_exceeded", retry_after=self._retry_after())
            if isinstance(job, Job):  # the cache partition: the caller's account
                job.request.partition = job.principal
            if job.principal:
                held = sum(1 for j in self._jobs() if j.principal == job.principal)
                if held >= self.limits.max_per_principal:
                    self.reject("per_principal")
                    raise TooManyRequests(
                        f"account {job.principal!r} already has {held} requests on "
                        f"{self.model_id} (max_per_principal={self.limits.max_per_principal})",
                        code="rate_limit_exceeded", retry_after=1)
            waiting.append(job)
            self.metrics.queue_depth.labels(self.model_id).set(self.queue_depth)
            self._cond.notify()

    def _jobs(self) -> list[Job | EmbedJob]:
        running = [self._embedding] if self._embedding is not None else []
        return [r.job for r in self._active.values()] + list(self._queue) + list(
            self._embeds) + running

    def reject(self, reason: str) -> None:
        self.metrics.rejections.labels(self.model_id, reason).inc()
        self.stats.rejections[reason] = self.stats.rejections.get(reason, 0) + 1

    def _retry_after(self) -> int:
        per_job = 2.0
        return max(1, round(per_job * (1 + len(self._queue)) / max(1, self.max_in_flight)))

    def withdraw(self, job: Job | EmbedJob) -> bool:
        """Take a job that has not started out of the queue (client left, or waited too long).

        A job already on a slot is cancelled: the scheduler frees its slot at the next step.
        """
        job.cancel()
        with self._cond:
            self._cond.notify()
            try:
                if isinstance(job, EmbedJob):
                    self._embeds.remove(job)
                else:
                    self._queue.remove(job)
            except ValueError:
                return False
            self.metrics.queue_depth.labels(self.model_id).set(self.queue_depth)
            return True

    def stop_if_idle(self) -> bool:
        """Take no more work, if none runs or waits (checked under the lock `submit` takes,
        so no job slips in between): then True, and `close` finishes. Else False."""
        with self._cond:
            if self._closed or self._jobs():
                return False
            self._closed = True
            return True

    def close(self, reason: ApiError) -> None:
        """Stop taking work, fail queued and running jobs with `reason`, and wait for the
        scheduler thread to exit: only then may the model's context be freed."""
        with self._cond:
            self._closed = True
            pending: list[Job | EmbedJob] = [*self._queue, *self._embeds]
            self._queue.clear()
            self._embeds.clear()
            for run in self._active.values():
                run.job.cancel(reason)
            if self._embedding is not None:
                self._embedding.cancel(reason)
            self._cond.notify_all()
        for job in pending:
            job.cancel()
            job.events.put(("error", reason))
        # A step is one llama_decode of at most n_batch tokens (prompts go in chunks), so
        # this returns within a step; it never gives up and lets the context be freed.
        while not self._thread.join(timeout=30) and self._thread.is_alive():
            log.warning("unload of %s is waiting for its current step to finish",
                        self.model_id)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the scheduler thread ----------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._queue or self._active or self._embeds or self._embedding
                               or self._closed):
                        self._cond.wait()
                    if self._closed:
                        return
                    if not self._active and self._queue:
                        self._gather()
                    admitted = self._admit()
                    if self._embedding is None and self._embeds:
                        self._embedding = self._embeds.popleft()
                        self.metrics.queue_depth.labels(self.model_id).set(self.queue_depth)
                try:
                    for run in admitted:
                        self._begin(run)
                    if self._embedding is not None:
                        self._embed_step(self._embedding)
                    for run in list(self._active.values()):
                        if run.job.cancelled:
                            self._finish(run, "cancelled")
                    if self._active:
                        self._step()
                except Exception as exc:  # a bug here must not leave the model without a thread
                    log.exception("scheduler step failed on %s", self.model_id)
                    for run in list(self._active.values()):
                        self._fail(run, exc)
                    if self._embedding is not None:
                        self._end_embedding(self._embedding, ApiError(
                            f"embedding failed: {exc}", code="embedding_failed"))
        finally:
            for run in list(self._active.values()):
                self._finish(run, "cancelled")
            if self._embedding is not None:
                self._end_embedding(self._embedding)

    def _gather(self) -> None:
        """An idle model's first request: wait (under the lock) while more keep arriving,
        each within gather_ms of the last and the slots not yet full, so that a burst is
        prefilled in one step. Split, the later arrivals would wait for the first ones'
        whole prefill and then take a step of their own. Bounded at 4 x gather_ms."""
        gap = self.limits.gather_ms / 1000
        if gap <= 0:
            return
        end = time.monotonic() + 4 * gap
        while len(self._queue) < self.max_in_flight and not self._closed:
            seen = len(self._queue)
            wait = min(gap, end - time.monotonic())
            if wait <= 0:
                return
            self._cond.wait(wait)
            if len(self._queue) == seen:  # quiet for gather_ms: go
                return

    def _admit(self) -> list[_Run]:
        """Place queued jobs on free slots (under the lock)."""
        admitted = []
        while self._queue and len(self._active) < self.max_in_flight:
            job = self._queue.popleft()
            if job.cancelled:
                continue
            slot = self._pick_slot(job.request.prompt_tokens, job.request.partition)
            run = self._active[slot] = _Run(job, slot)
            admitted.append(run)
        if admitted:
            self.metrics.queue_depth.labels(self.model_id).set(len(self._queue))
            self._busy_changed()
        return admitted

    def _pick_slot(self, prompt: list[int], partition: str = "") -> int:
        """The free slot whose cache shares the longest prefix with the prompt, unless taking
        it would drop more cached tokens than half of those it reuses (a chat template's
        shared header must not evict another conversation); else one next to the running
        sequences, the least recently used of those."""
        free = [s for s in range(self.slots) if s not in self._active]

        def reuse(s: int) -> int:
            match = self.model.prefix_match(s, prompt, partition)
            lost = self.model.cached_len(s) - match
            return match if lost * 2 <= match else 0

        value = {s: reuse(s) for s in free}
        best = max(free, key=lambda s: (value[s], -self._slot_used[s]))
        if value[best]:
            return best
        # No cache worth keeping: beside the running sequences (a gap between two of them
        # first), then the least recently used. llama.cpp decodes a split KV cache in
        # ubatches of consecutive sequence ids: each gap in the running slots is one more
        # graph a step (4 streams in bench/neuron_concurrency.py: 126 tok/s on the least
        # recently used slots, 175 beside each other; the direct loop 179).
        active = self._active

        def neighbours(s: int) -> int:
            return (s - 1 in active) + (s + 1 in active)

        return min(free, key=lambda s: (-neighbours(s), self._slot_used[s]))

    def _busy_changed(self) -> None:
        self.metrics.in_flight.labels(self.model_id).set(self.in_flight)

    # -- embeddings (the scheduler thread) -------------------------------------------------
    def _embed_step(self, job: EmbedJob) -> None:
        """One decode of the running embedding job; it ends once every input has a vector."""
        if not job.started.is_set():
            job.started.set()
            self.metrics.queue_wait.labels(self.model_id).observe(
                time.monotonic() - job.enqueued_at)
            self._busy_changed()
        if job.cancelled:
            self._end_embedding(job)
            return
        try:
            job.vectors += self.model.embed(job.inputs[len(job.vectors):])
        except Exception as exc:  # the engine failed: this request fails, the model stays
            log.exception("embedding failed on %s", self.model_id)
            self._end_embedding(job, ApiError(f"embedding failed: {exc}",
                                              code="embedding_failed"))
            return
        if len(job.vectors) >= len(job.inputs):
            self._end_embedding(job)

    def _end_embedding(self, job: EmbedJob, error: ApiError | None = None) -> None:
        with self._cond:
            self._embedding = None
            self._busy_changed()
        self.stats.last_used = time.time()
        if job.abort is not None or error is not None:
            job.events.put(("error", job.abort or error))
        elif not job.cancelled:  # (a cancelled job's caller has gone: nobody reads)
            self.metrics.prompt_tokens.labels(self.model_id).inc(sum(map(len, job.inputs)))
            job.events.put(("done", job.vectors))

    def _begin(self, run: _Run) -> None:
        job = run.job
        self.metrics.queue_wait.labels(self.model_id).observe(run.started - job.enqueued_at)
        job.started.set()
        try:
            run.seq = self.model.begin(run.slot, job.request)
        except Exception as exc:
            log.exception("could not start a sequence on %s", self.model_id)
            self._fail(run, exc)

    def _step(self) -> None:
        runs = [r for r in self._active.values() if r.seq is not None]
        t0 = time.monotonic()
        try:
            events = self.model.step([r.seq for r in runs])
        except Exception as exc:  # the engine failed: these requests fail, the model stays
            log.exception("generation failed on %s", self.model_id)
            for run in runs:
                self._fail(run, exc)
            return
        now = time.monotonic()
        self.metrics.batch_size.labels(self.model_id).observe(len(runs))
        decoded = sum(1 for _, ev in events if not ev.eog)
        if decoded:
            with self._cond:
                self._rate.append((t0, now, decoded))
        by_slot = {r.seq.slot: r for r in runs if r.seq is not None}
        for seq, ev in events:
            run = by_slot[seq.slot]
            self._on_token(run, ev, now)

    def _on_token(self, run: _Run, ev: TokenEvent, now: float) -> None:
        job = run.job
        seq = run.seq
        if seq is None:
            raise RuntimeError(f"{job} has no sequence")  # a scheduler bug: fail this job
        if run.first_at is None:
            run.first_at = now
            job.events.put(("start", seq.cached_tokens))
        if ev.eog:
            self._finish(run, "stop")
            return
        run.produced += 1
        delta = run.text.feed(ev.piece)
        if delta:
            job.events.put(("text", delta))
        if run.text.stopped_by is not None:
            self._finish(run, "stop")
        elif run.produced >= job.request.max_tokens or seq.n_past >= self.model.n_ctx - 1:
            self._finish(run, "length")

    def _release(self, run: _Run) -> None:
        if run.seq is not None:
            try:
                self.model.end(run.seq)
            except Exception:
                log.exception("could not free a sequence on %s", self.model_id)
        with self._cond:
            if self._active.get(run.slot) is run:
                del self._active[run.slot]
            self._slot_used[run.slot] = time.monotonic()
            self._busy_changed()
        self.stats.last_used = time.time()

    def _fail(self, run: _Run, exc: Exception) -> None:
        self._release(run)
        self.metrics.account_usage(run.job.principal, len(run.job.request.prompt_tokens),
                                   run.produced)
        run.job.events.put(("error", ApiError(f"generation failed: {exc}",
                                              code="generation_failed")))

    def _finish(self, run: _Run, finish: str) -> None:
        self._release(run)
        job = run.job
        if job.abort is not None:
            self.metrics.account_usage(job.principal, len(job.request.prompt_tokens),
                                       run.produced)
            job.events.put(("error", job.abort))
            return
        if finish != "cancelled" and job.cancelled:
            finish = "cancelled"
        tail = run.text.flush()
        if tail:
            job.events.put(("text", tail))
        cached = run.seq.cached_tokens if run.seq is not None else 0
        if run.first_at is None:  # nothing was generated (cancelled before the first token)
            run.first_at = time.monotonic()
            job.events.put(("start", cached))
        done = time.monotonic()
        req = job.request
        prefill_tokens = len(req.prompt_tokens) - cached
        self.stats.record(prefill_tokens, run.first_at - run.started, run.produced,
                          done - run.first_at)
        self.metrics.observe_generation(self.model_id, prompt=len(req.prompt_tokens),
                                        completion=run.produced,
                                        ttft=run.first_at - job.enqueued_at,
                                        decode_s=done - run.first_at, account=job.principal,
                                        cached=cached)
        job.events.put(("done", {
            "finish_reason": finish, "stop": run.text.stopped_by,
            "completion_tokens": run.produced, "prompt_tokens": len(req.prompt_tokens),
            "cached_tokens": cached, "prefill_ms": round((run.first_at - run.started) * 1000, 2),
            "decode_ms": round((done - run.first_at) * 1000, 2),
            "prefill_tokens": prefill_tokens,
            "queue_ms": round((run.started - job.enqueued_at) * 1000, 2),
        }))
