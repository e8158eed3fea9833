"""Turns sampled token bytes into text deltas, honouring stop sequences.

Token pieces can split a UTF-8 character, and a stop sequence can span tokens, so text
is released only once it can no longer become part of a stop sequence.

This runs on the model's scheduler thread for every token of every co-batched sequence, so
matching is incremental: each stop string keeps a Knuth-Morris-Pratt state (the longest
prefix of it that ends the text so far), and a token costs O(its characters x stops) however
long the stops or the text. Searching the held text again every token cost O(stop length^2)
(sixteen 200 KB stops: 87 ms a token for the whole batch). Hand-written because a library
matcher (Aho-Corasick, re) reports matches, not the partial match at the end of the text
that decides what may be released.
"""

from __future__ import annotations

import codecs


class _Stop:
    """One stop string and how much of it ends the text fed so far."""

    __slots__ = ("fail", "state", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.state = 0
        # fail[i]: the longest proper prefix of text[:i + 1] that is also its suffix.
        fail = [0] * len(text)
        k = 0
        for i in range(1, len(text)):
            while k and text[i] != text[k]:
                k = fail[k - 1]
            if text[i] == text[k]:
                k += 1
            fail[i] = k
        self.fail = fail

    def feed(self, chunk: str) -> int:
        """Advance over `chunk`; the index in it where this stop first ends, or -1."""
        text, fail, k = self.text, self.fail, self.state
        for i, ch in enumerate(chunk):
            while k and ch != text[k]:
                k = fail[k - 1]
            if ch == text[k]:
                k += 1
                if k == len(text):
                    self.state = k
                    return i
        self.state = k
        return -1


class TextStream:
    def __init__(self, stop: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [_Stop(s) for s in stop if s]
        self._pending = ""  # text held back: it may still begin a stop sequence
        self.stopped_by: str | None = None

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit."""
        if self.stopped_by is not None:
            return ""
        chunk = self._decoder.decode(piece)
        if not self._stops:
            out, self._pending = self._pending + chunk, ""
            return out
        base = len(self._pending)
        self._pending += chunk
        hit: tuple[int, str] | None = None
        for s in self._stops:
            end = s.feed(chunk)
            if end >= 0:  # its first occurrence; the earliest start wins, as a search's would
                found = (base + end + 1 - len(s.text), s.text)
                hit = found if hit is None or found < hit else hit
        if hit is not None:
            at, self.stopped_by = hit
            out, self._pending = self._pending[:at], ""
            return out
        keep = max(s.state for s in self._stops)
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """End of generation: release what was held back (no stop sequence completed)."""
        if self.stopped_by is not None:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return out
