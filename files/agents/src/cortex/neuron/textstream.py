"""Turns sampled token bytes into text deltas, honouring stop sequences.

Token pieces can split a UTF-8 character, and a stop sequence can span tokens, so text
is released only once it can no longer become part of a stop sequence.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stop: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._pending = ""
        self.stopped_by: str | None = None

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit."""
        if self.stopped_by is not None:
            return ""
        self._pending += self._decoder.decode(piece)
        if not self._stop:
            out, self._pending = self._pending, ""
            return out
        hit = min(((self._pending.find(s), s) for s in self._stop if s in self._pending),
                  default=None)
        if hit is not None:
            at, stop = hit
            out = self._pending[:at]
            self._pending = ""
            self.stopped_by = stop
            return out
        keep = self._held_suffix()
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep:]
        return out

    def flush(self) -> str:
        """End of generation: release what was held back (no stop sequence completed)."""
        if self.stopped_by is not None:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return out

    def _held_suffix(self) -> int:
        """Length of the longest tail of pending text that starts some stop sequence."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(s[:n]):
                    best = n
                    break
        return best
