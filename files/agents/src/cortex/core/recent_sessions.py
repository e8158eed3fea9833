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

import itertools
import re
import threading
import time
from collections import OrderedDict
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

HEADER = "X-Helexa-Session"
_TAG = re.compile(r"[0-9a-f]{16,64}")
KEEP = 4096  # tags kept per model: the sessions a replica can hold warm, with room to spare
# Tags listed per model in /health: every session served within a few polls, at well over
# a hundred requests a second; 256 tags are ~7 KB of JSON.
REPORT = 256


def valid(tag: str | None) -> bool:
    return bool(tag) and _TAG.fullmatch(tag) is not None


class Newest(Generic[K, V]):
    """A bounded map that keeps the `keep` keys set most recently, newest last
    (thread-safe). One shape for both ends: a neuron's tags, a gateway worker's record."""

    def __init__(self, keep: int) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            if len(self._items) > self._keep:
                self._items.popitem(last=False)

    def get(self, key: K) -> V | None:
        return self._items.get(key)  # (one lookup, atomic under the GIL: no lock)

    def newest(self, limit: int) -> list[tuple[K, V]]:
        """The `limit` keys set last, with their values, newest last."""
        with self._lock:
            out = list(itertools.islice(reversed(self._items.items()), limit))
        return out[::-1]


class RecentSessions:
    """A model's recently served session tags (request threads write, /health lists)."""

    def __init__(self, keep: int = KEEP) -> None:
        self._at: Newest[str, float] = Newest(keep)  # tag -> when served (monotonic)

    def served(self, tag: str | None) -> None:
        """A request of session `tag` was admitted (an invalid or absent tag: nothing)."""
        if valid(tag):
            self._at.put(tag, time.monotonic())

    def report(self, limit: int = REPORT) -> dict[str, float]:
        """The newest `limit` tags, each with the seconds since it was served."""
        now = time.monotonic()
        return {tag: round(now - at, 2) for tag, at in self._at.newest(limit)}


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
