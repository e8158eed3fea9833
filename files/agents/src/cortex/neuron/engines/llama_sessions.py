"""A llama.cpp context's slots and the session cache: save a slot's KV as blocks before its
tokens are dropped, restore a prompt's longest cached prefix into a slot.

Only the model's scheduler thread calls these (and the unload, once that thread has
exited), so a save or restore never runs against a freed context or beside a decode.
"""

from __future__ import annotations

import ctypes
import logging
import time

import llama_cpp

from cortex.neuron.engines import llama_state
from cortex.neuron.engines.llama_state import Layout, LayoutError
from cortex.neuron.session_cache import CacheView

log = logging.getLogger(__name__)


def _get(ctx: ctypes.c_void_p, slot: int) -> bytes:
    size = llama_cpp.llama_state_seq_get_size(ctx, slot)
    buf = (ctypes.c_uint8 * size)()
    got = llama_cpp.llama_state_seq_get_data(ctx, buf, size, slot)
    if got != size:
        raise LayoutError(f"llama.cpp wrote {got} of {size} bytes")
    return bytes(buf)


def probe(ctx: ctypes.c_void_p, mem: ctypes.c_void_p, batch: llama_cpp.llama_batch,
          token: int) -> Layout:
    """Decode one token into slot 0 of a fresh context and read its layout back (then drop
    it): a model whose state this neuron cannot cut is known at load, not at a restore."""
    batch.n_tokens = 1
    batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.logits[0] = token, 0, 1, True
    batch.seq_id[0][0] = 0
    try:
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise LayoutError("the probe's decode failed")
        state = llama_state.parse(_get(ctx, 0), 0)
        if state.cells != 1:
            raise LayoutError(f"one token made {state.cells} cells")
        return state.layout
    finally:
        llama_cpp.llama_memory_seq_rm(mem, 0, -1, -1)


class SlotStates:
    def __init__(self, ctx: ctypes.c_void_p, mem: ctypes.c_void_p, view: CacheView,
                 layout: Layout) -> None:
        self.ctx, self.mem, self.view, self.layout = ctx, mem, view, layout
        self.block = view.block_tokens

    def save(self, slot: int, partition: str, tokens: list[int], keep_until: float) -> None:
        """Store the whole blocks of the slot's `tokens` the cache does not hold yet."""
        keys = self.view.keys(partition, tokens)
        cache = self.view.cache
        new = cache.missing(keys)
        if not new:
            cache.put(keys, {}, keep_until)  # touched: a conversation in use stays
            return
        try:
            state = llama_state.parse(_get(self.ctx, slot), slot)
            if state.cells != len(tokens) or state.layout != self.layout:
                raise LayoutError(f"{state.cells} cells for {len(tokens)} tokens")
        except LayoutError as exc:  # never store what might not restore exactly
            log.warning("session cache: slot %d of %s not saved: %s", slot,
                        self.view.model_id, exc)
            return
        b = self.block
        cache.put(keys, {i: state.block(i * b, (i + 1) * b) for i in new}, keep_until)

    def restore(self, slot: int, partition: str, prompt: list[int], have: int,
                keep_until: float) -> int | None:
        """Put the longest cached prefix of `prompt` (whole blocks) in `slot` if it is
        longer than the `have` tokens the slot holds already. None: the slot is untouched;
        else the slot's KV now holds exactly prompt[:n] (0 after a failed restore)."""
        keys = self.view.keys(partition, prompt)
        cache = self.view.cache
        n = cache.available(keys)
        hit = n * self.block > have
        self.view.record_lookup(hit)
        if not hit:
            return None
        t0 = time.monotonic()
        payloads = cache.get(keys[:n], keep_until)  # (fewer, where a disk block is bad)
        if len(payloads) * self.block <= have:
            return None
        blob = llama_state.assemble(self.layout, payloads, self.block, slot)
        src = ctypes.cast(ctypes.c_char_p(blob), ctypes.POINTER(ctypes.c_uint8))
        if llama_cpp.llama_state_seq_set_data(self.ctx, src, len(blob), slot) != len(blob):
            log.warning("session cache: llama.cpp refused a restore into slot %d of %s",
                        slot, self.view.model_id)
            llama_cpp.llama_memory_seq_rm(self.mem, slot, -1, -1)
            return 0
        tokens = len(payloads) * self.block
        self.view.record_restore(tokens, time.monotonic() - t0)
        return tokens
