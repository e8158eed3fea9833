"""Which free slot a new sequence gets: a pure rule, so a table test can pin it down and
the scheduler's debug log can name the part of it that decided (as llama.cpp's server
logs its slot selection)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class FreeSlot:
    slot: int
    match: int  # leading prompt tokens its cache holds (for the prompt's partition; else 0)
    cached: int  # tokens its cache holds
    last_used: float  # when its last sequence ended


def reuse(s: FreeSlot) -> int:
    """The prompt tokens this slot would spare, or 0 where taking it would drop more of its
    cache than half of what it reuses (a chat template's shared header must not evict
    another conversation)."""
    lost = s.cached - s.match
    return s.match if s.match and lost * 2 <= s.match else 0


def choose(free: list[FreeSlot], running: Collection[int]) -> tuple[int, str]:
    """(the slot, the rule that picked it). The free slot that reuses most of the prompt
    (the least recently used among equals); with none worth keeping, one beside the running
    sequences, a gap between two of them first, then the least recently used.

    Why beside: llama.cpp decodes a split KV cache in ubatches of consecutive sequence ids,
    each gap in the running slots is one more graph a step (4 streams in
    bench/neuron_concurrency.py: 126 tok/s on the least recently used slots, 175 beside
    each other; the direct loop 179)."""
    best = max(free, key=lambda s: (reuse(s), -s.last_used))
    if reuse(best):
        return best.slot, f"longest cached prefix {reuse(best)} tokens"

    def neighbours(s: FreeSlot) -> int:
        return (s.slot - 1 in running) + (s.slot + 1 in running)

    pick = min(free, key=lambda s: (-neighbours(s), s.last_used))
    n = neighbours(pick)
    if n == 2:
        return pick.slot, "no cache worth keeping; the gap between two running slots"
    if n == 1:
        return pick.slot, "no cache worth keeping; beside a running slot"
    return pick.slot, "no cache worth keeping; the least recently used"
