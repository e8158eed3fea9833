"""An HTTP thread's side of a job: its events as they come, max_wait while it queues."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cortex.core.errors import Unavailable
from cortex.neuron.jobs import Done, Embedded, EmbedJob, Event, Failed, Job, Text

if TYPE_CHECKING:
    from cortex.neuron.registry import Loaded

POLL_SECS = 5.0


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Nothing happened for `every` seconds (a stream says so to its client, a request looks
    whether its client is still there)."""


class Waiter:
    """Relays a job's events to an HTTP thread, enforcing max_wait while it is queued;
    a job's `Failed` is raised as its error."""

    def __init__(self, loaded: Loaded, job: Job | EmbedJob, max_wait: float) -> None:
        self.loaded, self.job, self.max_wait = loaded, job, max_wait
        self.finished = False
        self._last_text = 0.0
        self.texts = 0  # the scheduler's text events (one a token, but for held-back text)

    def events(self, keepalive: bool = False, coalesce: float = 0.0,
               every: float = POLL_SECS) -> Iterator[Event | KeepAlive]:
        """The job's events; with `keepalive`, a KeepAlive after each `every` seconds
        without one."""
        job = self.job
        deadline = job.enqueued_at + self.max_wait
        while True:
            timeout = every
            if not job.started.is_set():
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
            try:
                ev = job.events.get(timeout=timeout)
            except queue.Empty:
                if not job.started.is_set() and time.monotonic() >= deadline:
                    if self.loaded.scheduler.withdraw(job):
                        self.loaded.scheduler.reject("queue_timeout")
                        raise Unavailable(
                            f"waited {self.max_wait:g} s for {self.loaded.id} without a free "
                            "slot; retry shortly", code="rate_limit_exceeded",
                            retry_after=5) from None
                    continue  # it started just now
                if keepalive:
                    yield KeepAlive()
                continue
            if isinstance(ev, Text):
                self.texts += 1
            if isinstance(ev, Text) and coalesce > 0:
                # Let a few tokens gather before the next write: fewer wake-ups of this
                # thread and of the client, which compete with the model for the cores.
                wait = self._last_text + coalesce - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                text, follow = self._drain(ev.text)
                self._last_text = time.monotonic()
                yield Text(text)
                if follow is None:
                    continue
                ev = follow
            if isinstance(ev, Failed):
                self.finished = True
                raise ev.error
            yield ev
            if isinstance(ev, Done | Embedded):
                self.finished = True
                return

    def _drain(self, text: str) -> tuple[str, Event | None]:
        """Merge the text events already queued; return the first other event, if any."""
        while True:
            try:
                ev = self.job.events.get_nowait()
            except queue.Empty:
                return text, None
            if not isinstance(ev, Text):
                return text, ev
            self.texts += 1
            text += ev.text

    def release(self) -> None:
        if not self.finished:
            self.loaded.scheduler.withdraw(self.job)
