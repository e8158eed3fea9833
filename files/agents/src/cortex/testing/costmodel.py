"""A model replica's time, simulated: what a neuron stand-in needs to stand for a GPU.

The bench's simulation mode (bench/fleet_agents.py --simulate) runs the real gateway over
neuron stand-ins (cortex.testing.standin) that serve chat with this engine instead of a
model: the same admission (slots, a bounded queue, 503 when full), the same slot choice as
the neuron's scheduler (the free slot sharing the longest prefix, unless that drops more
cache than half of what it reuses), and a fluid model of the engine's time:

- prefill is compute-bound: the prompt tokens not found in the slot's cache (nor in the
  host-RAM tier, restored at `restore_tok_s`) are processed at `prefill_tok_s`, shared by
  the sequences prefilling at once;
- decode is memory-bound: b sequences decode `decode_tok_s * b / (1 + (b - 1) * contention)`
  tokens a second between them (contention 0: perfect batching; fitted to the measured
  engine it is ~0.44 on these CPU cores, see COST_MODELS in the bench).

Tokens are counted as text is: 4 characters a token, as the stand-in always has.
`speed` runs the clock faster than the model says (every duration divided by it), so a
fleet's hour fits in minutes; figures are reported in the model's own seconds.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

CHARS_PER_TOKEN = 4
TICK_SECS = 0.01  # the engine's step, in wall seconds


@dataclass(frozen=True)
class CostModel:
    prefill_tok_s: float  # prompt tokens a second, all prefilling sequences together
    decode_tok_s: float  # tokens a second of one sequence decoding alone
    slots: int  # sequences at once
    contention: float = 0.0  # decode: 0 = b sequences each as fast as one alone
    max_queue_depth: int = 4
    ctx_tokens: int = 32768  # a slot's context: its cache never holds more
    ram_cache_tokens: int = 0  # host-RAM tier: tokens of evicted sequences kept (0: none)
    restore_tok_s: float = 0.0  # tokens a second restored from the RAM tier
    load_secs: float = 20.0  # a load of the model (weights already on the host)
    speed: float = 1.0  # the clock runs this many times faster than the model's

    def decode_rate(self, b: int) -> float:
        """Tokens a second, all `b` decoding sequences together."""
        return self.decode_tok_s * b / (1 + (b - 1) * self.contention) if b else 0.0


class Full(Exception):
    """Every slot busy and the queue full: the neuron's 503."""


@dataclass
class Job:
    prompt: str  # the rendered prompt (its text stands for its tokens)
    max_tokens: int
    enqueued: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    todo_prefill: float = 0.0  # tokens left to prefill
    todo_restore: float = 0.0  # tokens left to restore from the RAM tier
    produced: float = 0.0
    first_token: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    slot: int = -1

    @property
    def completion_tokens(self) -> int:
        return min(self.max_tokens, int(self.produced))


class SimReplica:
    """One loaded model under a cost model: submit() a job, wait on its events."""

    def __init__(self, cost: CostModel) -> None:
        self.cost = cost
        self.slots: list[str] = [""] * cost.slots  # what each slot's cache holds
        self.slot_used = [0.0] * cost.slots
        self.active: dict[int, Job] = {}
        self.queue: list[Job] = []
        self.ram: OrderedDict[str, int] = OrderedDict()  # evicted prompts, LRU last
        self.lock = threading.Condition()
        self.last_used = time.time()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="sim-replica", daemon=True)
        self.thread.start()

    # -- admission (HTTP threads) -----------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self.active)

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    def queue_wait(self) -> float:
        with self.lock:
            return (time.monotonic() - self.queue[0].enqueued) * self.cost.speed \
                if self.queue else 0.0

    def submit(self, prompt: str, max_tokens: int) -> Job:
        job = Job(prompt, max_tokens, prompt_tokens=max(1, len(prompt) // CHARS_PER_TOKEN))
        with self.lock:
            free = self.cost.slots - len(self.active)
            if len(self.queue) >= self.cost.max_queue_depth + free:
                raise Full
            self.queue.append(job)
            self.lock.notify()
        return job

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify()

    # -- the engine (its own thread) --------------------------------------------------
    def _run(self) -> None:
        last = time.monotonic()
        while True:
            with self.lock:
                while not (self.queue or self.active or self.stopped):
                    self.lock.wait()
                    last = time.monotonic()
                if self.stopped:
                    return
                self._admit()
            time.sleep(TICK_SECS)
            now = time.monotonic()
            with self.lock:
                self._step((now - last) * self.cost.speed)
            last = now

    def _admit(self) -> None:
        while self.queue and len(self.active) < self.cost.slots:
            job = self.queue.pop(0)
            job.slot = self._pick_slot(job.prompt)
            cached = _common_prefix(self.slots[job.slot], job.prompt) // CHARS_PER_TOKEN
            restored = self._from_ram(job.prompt) if self.cost.ram_cache_tokens else 0
            if restored > cached:
                job.todo_restore = restored - cached
                cached = restored
            if _common_prefix(self.slots[job.slot], job.prompt) < len(self.slots[job.slot]):
                self._evict(self.slots[job.slot])  # overwritten, not extended
            job.cached_tokens = min(cached, job.prompt_tokens - 1)
            job.todo_prefill = job.prompt_tokens - job.cached_tokens
            self.active[job.slot] = job

    def _pick_slot(self, prompt: str) -> int:
        free = [s for s in range(self.cost.slots) if s not in self.active]

        def reuse(s: int) -> int:
            match = _common_prefix(self.slots[s], prompt)
            lost = len(self.slots[s]) - match
            return match if lost * 2 <= match else 0

        best = max(free, key=lambda s: (reuse(s), -self.slot_used[s]))
        return best if reuse(best) else min(free, key=lambda s: self.slot_used[s])

    def _from_ram(self, prompt: str) -> int:
        best, key = 0, None
        for text in self.ram:
            n = _common_prefix(text, prompt)
            if n > best:
                best, key = n, text
        if key is not None:
            self.ram.move_to_end(key)
        return best // CHARS_PER_TOKEN

    def _evict(self, text: str) -> None:
        """A slot's cache, about to be overwritten, goes to the RAM tier (if any)."""
        if not text or not self.cost.ram_cache_tokens:
            return
        self.ram[text] = len(text) // CHARS_PER_TOKEN
        self.ram.move_to_end(text)
        while sum(self.ram.values()) > self.cost.ram_cache_tokens:
            self.ram.popitem(last=False)

    def _step(self, dt: float) -> None:
        """Advance every active job by `dt` seconds of the model's time."""
        restoring = [j for j in self.active.values() if j.todo_restore > 0]
        prefilling = [j for j in self.active.values()
                      if j.todo_restore <= 0 and j.todo_prefill > 0]
        decoding = [j for j in self.active.values()
                    if j.todo_restore <= 0 and j.todo_prefill <= 0]
        for j in restoring:
            j.todo_restore -= dt * self.cost.restore_tok_s / len(restoring)
        for j in prefilling:
            j.todo_prefill -= dt * self.cost.prefill_tok_s / len(prefilling)
            if j.todo_prefill <= 0:
                j.produced = 1.0  # the first token comes with the prompt's last step
                j.first_token.set()
        rate = self.cost.decode_rate(len(decoding))
        for j in decoding:
            j.produced += dt * rate / len(decoding)
            if j.produced >= j.max_tokens:
                self._finish(j)
        self.last_used = time.time()

    def _finish(self, job: Job) -> None:
        # The slot keeps the prompt (its answer comes back in the next turn's prompt behind
        # the template's role markers, so the cache matches up to the prompt).
        self.slots[job.slot] = job.prompt[: self.cost.ctx_tokens * CHARS_PER_TOKEN]
        self.slot_used[job.slot] = time.monotonic()
        del self.active[job.slot]
        job.done.set()
        self.lock.notify()

    def tokens(self, job: Job, chunk: int = 8) -> Iterator[int]:
        """Tokens produced so far: the first alone (the time to first token), then `chunk`
        at a time (for a stream), until the job ends."""
        job.first_token.wait()
        sent = 1
        yield 1
        while True:
            finished = job.done.wait(TICK_SECS * 2)
            now = job.completion_tokens
            while now - sent >= chunk or (finished and now > sent):
                n = min(chunk, now - sent)
                sent += n
                yield n
            if finished:
                return


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix, by halving (slices compare in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
