"""Which sessions a model served lately: what a neuron tells gateways so that they agree,
with nothing shared between them, on where each session's prompt is cached.

A gateway names a request's session in `X-Helexa-Session` (an opaque tag: a hash of the
account and the session key, never the key itself). The neuron keeps the tags of the
requests it admitted, newest last, and lists the newest in `/health` with how long ago
each was served. Every gateway worker merges those lists into where it sends a session's
next turn: the replica that served it last, which holds its prompt, rather than wherever
a hash would put it (a hash moves sessions when a replica is added; this does not).

One owner of the format: the tag's shape, the list's length, and reading a list back.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from typing import Any

HEADER = "X-Helexa-Session"
_TAG = re.compile(r"[0-9a-f]{16,64}")
KEEP = 4096  # tags kept per model: the sessions a replica can hold warm, with room to spare
# Tags listed per model in /health: every session served within a few polls, at well over
# a hundred requests a second; 256 tags are ~7 KB of JSON.
REPORT = 256


def valid(tag: str | None) -> bool:
    return bool(tag) and _TAG.fullmatch(tag) is not None


class RecentSessions:
    """A model's recently served session tags (thread-safe: request threads write, the
    /health reader lists)."""

    def __init__(self, keep: int = KEEP) -> None:
        self._at: OrderedDict[str, float] = OrderedDict()  # tag -> when served (monotonic)
        self._keep = keep
        self._lock = threading.Lock()

    def served(self, tag: str | None) -> None:
        """A request of session `tag` was admitted (an invalid or absent tag: nothing)."""
        if not valid(tag):
            return
        with self._lock:
            self._at[tag] = time.monotonic()
            self._at.move_to_end(tag)
            if len(self._at) > self._keep:
                self._at.popitem(last=False)

    def report(self, limit: int = REPORT) -> dict[str, float]:
        """The newest `limit` tags, each with the seconds since it was served."""
        now = time.monotonic()
        with self._lock:
            newest = list(self._at.items())[-limit:] if len(self._at) > limit \
                else list(self._at.items())
        return {tag: round(now - at, 2) for tag, at in newest}


def read_report(raw: Any, now: float) -> dict[str, float]:
    """A /health model entry's `sessions` as tag -> when it was served (`now` minus its
    age; the reader's clock); what is not a valid entry is left out."""
    if not isinstance(raw, dict):
        return {}
    out = {}
    for tag, age in list(raw.items())[:REPORT]:
        if valid(tag) and isinstance(age, (int, float)) and age >= 0:
            out[tag] = now - float(age)
    return out
