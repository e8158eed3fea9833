"""The last requests this gateway worker finished, for the dashboard.

Per worker by nature (each gunicorn worker sees only the requests it served), and said
so on the page. A record names the key by its key_id, never the key.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Finished:
    """One finished request as the gateway saw it; `started`, `first_chunk_at` and `ended`
    are time.monotonic() readings, `at` the wall clock when it was written down."""

    model: str
    node: str
    key_id: str
    status: int
    code: str
    prompt_tokens: int
    completion_tokens: int
    started: float
    first_chunk_at: float | None
    ended: float
    at: float = field(default_factory=time.time)
    seq: int = 0

    def record(self) -> dict[str, Any]:
        """What the dashboard shows of it."""
        first, tokens = self.first_chunk_at, self.completion_tokens
        decode = self.ended - first if first is not None else 0.0
        return {
            "seq": self.seq, "at": round(self.at, 3), "model": self.model, "node": self.node,
            "key_id": self.key_id, "status": self.status, "code": self.code or None,
            "ttft_ms": None if first is None else round((first - self.started) * 1000, 1),
            "duration_ms": round((self.ended - self.started) * 1000, 1),
            "prompt_tokens": self.prompt_tokens, "completion_tokens": tokens,
            "tok_s": round(tokens / decode, 1) if tokens > 1 and decode > 0 else None,
        }


class RecentRequests:
    def __init__(self, size: int = 200) -> None:
        # Requests as they finished; the record (a dict) is built when read: every request
        # passes here and few are ever shown. Appends, counts and copies are each one step
        # under the GIL: no lock (under gevent a lock is Python code, taken every request).
        self._items: deque[Finished] = deque(maxlen=size)
        self._seq = itertools.count(1)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def record(self, finished: Finished) -> dict[str, Any] | None:
        """Keep one finished request; its record when someone listens (None otherwise:
        nobody needs it now)."""
        finished.seq = next(self._seq)
        self._items.append(finished)
        if not self.listeners:
            return None
        item = finished.record()
        for listener in list(self.listeners):
            listener(item)
        return item

    def items(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [f.record() for f in reversed(self._items.copy())]
