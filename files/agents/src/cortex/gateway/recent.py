"""The last requests this gateway worker finished, for the dashboard.

Per worker by nature (each gunicorn worker sees only the requests it served), and said
so on the page. A record names the key by its key_id, never the key.
"""

from __future__ import annotations

import threading
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
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._seq = 0
        self._lock = threading.Lock()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def record(self, model: str, node: str, key_id: str, outcome: _Outcome, started: float,
               ended: float | None = None) -> dict[str, Any]:
        """One finished request: `started`/`ended` are time.monotonic() readings."""
        ended = time.monotonic() if ended is None else ended
        first = outcome.first_chunk_at
        decode = ended - first if first is not None else 0.0
        tokens = outcome.completion_tokens
        with self._lock:
            self._seq += 1
            item = {
                "seq": self._seq, "at": round(time.time(), 3), "model": model, "node": node,
                "key_id": key_id, "status": outcome.status, "code": outcome.code or None,
                "ttft_ms": None if first is None else round((first - started) * 1000, 1),
                "duration_ms": round((ended - started) * 1000, 1),
                "prompt_tokens": outcome.prompt_tokens, "completion_tokens": tokens,
                "tok_s": round(tokens / decode, 1) if tokens > 1 and decode > 0 else None,
            }
            self._items.append(item)
        for listener in list(self.listeners):
            listener(item)
        return item

    def items(self) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._items))
