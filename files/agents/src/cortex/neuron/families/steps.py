"""What every family's streaming parser shares (stream.Parser, harmony.HarmonyParser): text
taken in steps until it waits for more, parts of one kind in a row merged, and the search
for markers that may arrive split across tokens."""

from __future__ import annotations

from collections.abc import Iterable

from cortex.neuron.families.base import Part

MAX_BLOCK_CHARS = 4 * 2**20  # a call block longer than this is text, not a call


class StepParser:
    """What every family's parser shares: text is taken in steps (`_step`, each one move)
    until it waits for more, and parts of one kind in a row are merged.
    Feed text, get parts; `finish` at the end of output. Never raises on model text."""

    def __init__(self) -> None:
        self.tool_calls = 0  # calls read so far
        self._buf = ""

    def feed(self, text: str) -> list[Part]:
        self._buf += text
        parts: list[Part] = []
        while self._step(parts, final=False):
            pass
        return parts

    def finish(self) -> list[Part]:
        parts: list[Part] = []
        while self._step(parts, final=True):
            pass
        self._finish(parts)
        self._buf = ""
        return parts

    def _step(self, parts: list[Part], final: bool) -> bool:
        """One move; False when the text so far is all used (or held back)."""
        raise NotImplementedError

    def _finish(self, parts: list[Part]) -> None:
        """At the end of output: what is left in the buffer."""
        raise NotImplementedError

    def _emit(self, parts: list[Part], kind: str, text: str) -> None:
        if not text:
            return
        if parts and parts[-1].kind == kind:
            parts[-1].text += text
        else:
            parts.append(Part(kind, text=text))

    def _emit_until(self, parts: list[Part], kind: str, markers: Iterable[str], final: bool
                    ) -> tuple[int, str | None]:
        """The first of `markers` in the buffer, or, with none there, the buffer out as
        `kind` but for a tail that may still begin one."""
        at, marker = first(self._buf, markers)
        if marker is None:
            keep = 0 if final else partial_tail(self._buf, markers)
            self._emit(parts, kind, self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
        return at, marker


def first(buf: str, markers: Iterable[str], start: int = 0) -> tuple[int, str | None]:
    """The first of `markers` in `buf` from `start` (the longest where two start there)."""
    best: tuple[int, str | None] = (-1, None)
    for m in markers:
        at = buf.find(m, start)
        if at >= 0 and (best[1] is None or at < best[0] or (at == best[0] and len(m) > len(
                best[1]))):
            best = (at, m)
    return best


def partial_tail(buf: str, markers: Iterable[str]) -> int:
    """How many characters at the end of `buf` may begin one of `markers`."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(buf)), best, -1):
            if buf.endswith(m[:n]):
                best = n
                break
    return best
