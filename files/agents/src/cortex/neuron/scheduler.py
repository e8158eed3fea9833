"""Continuous batching: one scheduler thread per loaded model, over the model's slots.

HTTP threads never run inference: they submit a Job (jobs.py) and read its events through
a Waiter (waiter.py). Each step the scheduler admits queued jobs to free slots (slots.py:
the free slot whose cache shares the longest prefix with the prompt, for the same account),
runs one batch holding every active sequence's next token and prompt chunks of the new
ones, and routes the sampled tokens. A sequence that ends (EOS, stop string, max_tokens,
client gone, error) frees its slot at once; the others go on. Admission (admission.py):
in flight up to max_in_flight (default: the slot count), then a bounded queue
(max_queue_depth), a few places per principal (max_per_principal), max_wait_secs (503).
An idle model waits gather_ms for a burst's other requests, to prefill them in one step.
Embedding jobs share those limits and need no slot: one decode of the head job runs between
two steps, so an embedding batch holds the chat sequences up no longer than a prompt chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from cortex.core.errors import ApiError
from cortex.neuron import slots as slot_rule
from cortex.neuron.admission import Admission, Occupancy
from cortex.neuron.config import AdmissionConfig
from cortex.neuron.engines import LoadedModel
from cortex.neuron.engines.base import Sequence, TokenEvent
from cortex.neuron.jobs import Done, Embedded, EmbedJob, Failed, Job, Started, Text
from cortex.neuron.textstream import TextStream

log = logging.getLogger(__name__)

RATE_WINDOW_SECS = 10.0  # aggregate decode tok/s is measured over this window

__all__ = ["EmbedJob", "Job", "ModelScheduler"]


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
        self.admitted_at = time.monotonic()  # when it got its slot
        self.first_at: float | None = None


class ModelScheduler:
    def __init__(self, model_id: str, model: LoadedModel, limits: AdmissionConfig,
                 metrics: Any) -> None:
        self.model_id = model_id
        self.model = model
        self.limits = limits
        self.metrics = metrics
        self.slots = model.n_slots
        self.admission = Admission(model_id, limits, self.slots)
        self.max_in_flight = self.admission.max_in_flight
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
        embed = isinstance(job, EmbedJob)
        with self._cond:
            self.submitted_at = time.monotonic()  # (an if_idle unload reads it)
            occ = Occupancy(
                closed=self._closed, running=len(self._active), queued=len(self._queue),
                embedding=self._embedding is not None, embeds_queued=len(self._embeds),
                by_principal=sum(1 for j in self._jobs() if j.principal == job.principal)
                if job.principal else 0)
            refusal = self.admission.refusal(occ, embed=embed, principal=job.principal)
            if refusal is not None:
                reason = self.admission.reason(refusal)
                if reason:
                    self.reject(reason)
                raise refusal
            if isinstance(job, Job):
                job.request.partition = job.principal  # the cache partition: the account
                self._queue.append(job)
            else:
                self._embeds.append(job)
            self.metrics.queue_depth.labels(self.model_id).set(self.queue_depth)
            self._cond.notify()

    def _jobs(self) -> list[Job | EmbedJob]:
        running = [self._embedding] if self._embedding is not None else []
        return [r.job for r in self._active.values()] + list(self._queue) + list(
            self._embeds) + running

    def reject(self, reason: str) -> None:
        self.metrics.rejections.labels(self.model_id, reason).inc()
        self.stats.rejections[reason] = self.stats.rejections.get(reason, 0) + 1

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
            job.events.put(Failed(reason))
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
        free = [slot_rule.FreeSlot(s, self.model.prefix_match(s, prompt, partition),
                                   self.model.cached_len(s), self._slot_used[s])
                for s in range(self.slots) if s not in self._active]
        slot, why = slot_rule.choose(free, self._active)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: slot %d chosen: %s of %d, partition %r", self.model_id, slot, why,
                      len(prompt), partition)
        return slot

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
            job.events.put(Failed(job.abort or error))
        elif not job.cancelled:  # (a cancelled job's caller has gone: nobody reads)
            self.metrics.prompt_tokens.labels(self.model_id).inc(sum(map(len, job.inputs)))
            job.events.put(Embedded(job.vectors))

    def _begin(self, run: _Run) -> None:
        job = run.job
        self.metrics.queue_wait.labels(self.model_id).observe(run.admitted_at - job.enqueued_at)
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
            job.events.put(Started(seq.cached_tokens))
        if ev.eog:
            self._finish(run, "stop")
            return
        run.produced += 1
        delta = run.text.feed(ev.piece)
        if delta:
            job.events.put(Text(delta))
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
        run.job.events.put(Failed(ApiError(f"generation failed: {exc}",
                                           code="generation_failed")))

    def _finish(self, run: _Run, finish: str) -> None:
        self._release(run)
        job = run.job
        if job.abort is not None:
            self.metrics.account_usage(job.principal, len(job.request.prompt_tokens),
                                       run.produced)
            job.events.put(Failed(job.abort))
            return
        if finish != "cancelled" and job.cancelled:
            finish = "cancelled"
        tail = run.text.flush()
        if tail:
            job.events.put(Text(tail))
        cached = run.seq.cached_tokens if run.seq is not None else 0
        if run.first_at is None:  # nothing was generated (cancelled before the first token)
            run.first_at = time.monotonic()
            job.events.put(Started(cached))
        done = time.monotonic()
        req = job.request
        prefill_tokens = len(req.prompt_tokens) - cached
        self.stats.record(prefill_tokens, run.first_at - run.admitted_at, run.produced,
                          done - run.first_at)
        self.metrics.observe_generation(self.model_id, prompt=len(req.prompt_tokens),
                                        completion=run.produced,
                                        ttft=run.first_at - job.enqueued_at,
                                        decode_s=done - run.first_at, account=job.principal,
                                        cached=cached)
        job.events.put(Done({
            "finish_reason": finish, "stop": run.text.stopped_by,
            "completion_tokens": run.produced, "prompt_tokens": len(req.prompt_tokens),
            "cached_tokens": cached,
            "prefill_ms": round((run.first_at - run.admitted_at) * 1000, 2),
            "decode_ms": round((done - run.first_at) * 1000, 2),
            "prefill_tokens": prefill_tokens,
            "queue_ms": round((run.admitted_at - job.enqueued_at) * 1000, 2),
        }))
