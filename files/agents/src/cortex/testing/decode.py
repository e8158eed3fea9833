"""Decoding on an engine's loaded model directly, with no scheduler: for tests of the
engines' slots and the KV state they save and restore."""

from __future__ import annotations

from typing import Any

from cortex.neuron.engines.base import GenerationRequest


def greedy(model: Any, slot: int, prompt: list[int], n: int = 16, partition: str = ""
           ) -> tuple[list[int], int]:
    """`n` tokens greedily decoded after `prompt` on `slot` (in `partition`'s cache), and
    how many of the prompt's tokens the slot had cached or restored."""
    seq = model.begin(slot, GenerationRequest(prompt_tokens=prompt, max_tokens=n,
                                              temperature=0, partition=partition))
    out: list[int] = []
    while len(out) < n:
        out += [ev.token for _, ev in model.step([seq])]
    model.end(seq)
    return out, seq.cached_tokens
