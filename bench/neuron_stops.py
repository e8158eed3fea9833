"""Stop strings on the scheduler thread: microseconds a token, incremental matching beside a
rescan of the held text (the matcher before issue 19 item 6, kept here as the baseline).

Every token of every co-batched sequence goes through the matcher, so its cost per token is
what a request's stop strings cost the whole batch. Cases: no stops, four short ones, sixteen
of the longest the API takes (500 characters) that the text keeps almost matching, and the
issue's sixteen 200 KB stops (the API refuses them now; the class alone is timed). Prints
figures; asserts nothing.

    .venv/bin/python bench/neuron_stops.py [--tokens 2000]
"""

from __future__ import annotations

import argparse
import codecs
import statistics
import time

from cortex.core.validate import MAX_STOP_CHARS, MAX_STOPS
from cortex.neuron.textstream import TextStream


class Rescan:
    """The previous matcher: search the held text for each stop, then find the longest held
    tail that starts one by trying every length (O(stop length^2) a token)."""

    def __init__(self, stop: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._pending = ""
        self.stopped_by: str | None = None

    def feed(self, piece: bytes) -> str:
        self._pending += self._decoder.decode(piece)
        hit = min(((self._pending.find(s), s) for s in self._stop if s in self._pending),
                  default=None)
        if hit is not None:
            self.stopped_by, self._pending = hit[1], ""
            return ""
        keep = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self._pending)), keep, -1):
                if self._pending.endswith(s[:n]):
                    keep = n
                    break
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep:]
        return out


def per_token_us(cls: type, stops: list[str], piece: bytes, tokens: int,
                 warm: bytes = b"") -> float:
    """Median of 5 runs of `tokens` feeds after `warm` (untimed), in microseconds a token."""
    runs = []
    for _ in range(5):
        s = cls(stops)
        s.feed(warm)
        t0 = time.perf_counter()
        for _ in range(tokens):
            s.feed(piece)
        runs.append((time.perf_counter() - t0) / tokens * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2000)
    args = ap.parse_args()
    near = [("a" * (MAX_STOP_CHARS - 1)) + chr(ord("b") + i) for i in range(MAX_STOPS)]
    huge = [("a" * (200_000 - 1)) + chr(ord("b") + i) for i in range(16)]
    # The near-miss cases start with the text one stop's length in (untimed): from then on
    # all of it is held back, and a rescan goes over all of it every token.
    cases = [
        ("no stops", [], b" word", args.tokens, b""),
        ("4 short stops", ["\n\n", "###", "</s>", "User:"], b" word", args.tokens, b""),
        (f"{MAX_STOPS} x {MAX_STOP_CHARS} chars, near misses", near, b"a", args.tokens,
         b"a" * MAX_STOP_CHARS),
        ("16 x 200 KB, near misses", huge, b"a", 20, b"a" * 200_000),
    ]
    print(f"{'case':<36} {'incremental us/tok':>19} {'rescan us/tok':>15} {'ratio':>8}")
    for name, stops, piece, tokens, warm in cases:
        new = per_token_us(TextStream, stops, piece, tokens, warm)
        old = per_token_us(Rescan, stops, piece, tokens, warm)
        print(f"{name:<36} {new:>19.2f} {old:>15.2f} {old / new:>7.1f}x")


if __name__ == "__main__":
    main()
