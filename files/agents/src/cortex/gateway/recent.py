"""The last requests this gateway worker finished, for the dashboard.

Per worker by nature (each gunicorn worker sees only the requests it served), and said
so on the page. A record names the key by its key_id, never the key.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol


class _Outcome(Protocol):
    status: int
    code: str
    prompt_tokens: int
    completion_tokens: int
    first_chunk_at: float | None


class RecentRequests:
    def __init__(self, size: int = 200) -> None:
        # The readings as taken; the record (a dict) is built when read. Every request
        # passes here and few are ever shown: this keeps ~5 us off each one.
        # Appends, counts and copies are each one step under the GIL: no lock (under gevent
        # a lock is Python code, taken on every request).
        self._items: deque[tuple] = deque(maxlen=size)
        self._seq = itertools.count(1)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def record(self, model: str, node: str, key_id: str, outcome: _Outcome, started: float,
               ended: float | None = None) -> dict[str, Any] | None:
        """One finished request: `started`/`ended` are time.monotonic() readings. Returns
        its record when someone listens (None otherwise: nobody needs it now)."""
        ended = time.monotonic() if ended is None else ended
        readings = (next(self._seq), time.time(), model, node, key_id, outcome.status,
                    outcome.code, outcome.first_chunk_at, started, ended,
                    outcome.prompt_tokens, outcome.completion_tokens)
        self._items.append(readings)
        if not self.listeners:
            return None
        item = _record(readings)
        for listener in list(self.listeners):
            listener(item)
        return item

    def items(self) -> list[dict[str, Any]]:
        """Newest first."""
        return [_record(r) for r in reversed(self._items.copy())]


def _record(readings: tuple) -> dict[str, Any]:
    (seq, at, model, node, key_id, status, code, first, started, ended, prompt,
     tokens) = readings
    decode = ended - first if first is not None else 0.0
    return {
        "seq": seq, "at": round(at, 3), "model": model, "node": node, "key_id": key_id,
        "status": status, "code": code or None,
        "ttft_ms": None if first is None else round((first - started) * 1000, 1),
        "duration_ms": round((ended - started) * 1000, 1),
        "prompt_tokens": prompt, "completion_tokens": tokens,
        "tok_s": round(tokens / decode, 1) if tokens > 1 and decode > 0 else None,
    }
