"""Work for a model's scheduler thread, and the events it sends back to the HTTP thread.

A `Job` (a completion) hears `Started` when its first token is out (or it ended without
one), `Text` as its text is released, then `Done` with its summary or `Failed`. An
`EmbedJob` hears `Embedded` or `Failed`. The HTTP thread reads them through a `Waiter`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cortex.core.errors import ApiError
from cortex.neuron.engines import GenerationRequest


@dataclass(frozen=True, slots=True)
class Started:
    cached_tokens: int  # prompt tokens reused (slot or session cache), not prefilled


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    # finish_reason, stop, completion_tokens, prompt_tokens, cached_tokens, prefill_ms,
    # decode_ms, prefill_tokens, queue_ms (what replies report as usage and timing)
    summary: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: list[Any]


@dataclass(frozen=True, slots=True)
class Failed:
    error: ApiError


Event = Started | Text | Done | Embedded | Failed


@dataclass
class Job:
    request: GenerationRequest
    stop: list[str]
    principal: str = ""
    enqueued_at: float = field(default_factory=time.monotonic)
    events: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)
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
    """Embeddings of `inputs` (token lists).

    The same shape as a Job where admission and waiting need it (principal, enqueued_at,
    events, started, cancel), so both go through one queue discipline and one waiter.
    """

    inputs: list[list[int]]
    principal: str = ""
    enqueued_at: float = field(default_factory=time.monotonic)
    events: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)
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
