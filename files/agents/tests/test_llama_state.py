"""A sequence's KV state cut into blocks and put back together (engines/llama_state.py),
against the real llama.cpp: with flash attention (V rows) and without it (V transposed)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp
import pytest

from cortex.neuron.engines import llama_state
from cortex.neuron.engines.llama_cpp import LlamaCppEngine
from cortex.neuron.engines.llama_sessions import _get
from cortex.neuron.engines.llama_state import LayoutError
from cortex.testing.decode import greedy

B = 16
LIGHTHOUSE = (
    "Maren keeps the lighthouse on a rocky island in the North Sea. Every evening she climbs "
    "one hundred and twelve steps, trims the wick, polishes the lens and writes the weather "
    "in a leather logbook. Her brother Jonas brings bread, lamp oil and letters on Thursdays "
    "if the sea allows. Last winter a fishing boat ran aground on the northern reef. Tonight")


@pytest.fixture(params=["flash", "no-flash"])
def model(request, smollm2_file: Path, models_dir: Path, monkeypatch):
    """SmolLM2 with flash attention (V rows); the tiny model without it (V transposed: the
    other layout branch, checked to the byte against llama.cpp's own blob, fast)."""
    path = smollm2_file
    if request.param == "no-flash":
        path = models_dir / "tiny-long.gguf"
        params = llama_cpp.llama_context_default_params

        def no_flash():
            cp = params()
            cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            return cp

        monkeypatch.setattr(llama_cpp, "llama_context_default_params", no_flash)
    m = LlamaCppEngine().load(path, n_ctx=512, n_threads=1, n_gpu_layers=0,
                              devices=[], has_gpu=False, n_slots=3)
    yield m
    m.close()


def _cold_split(model, slot: int, prompt: list[int], at: int) -> list[int]:
    """Greedy tokens for `prompt` computed from nothing, its first `at` tokens in one
    decode and the rest in another: what a restore of `at` tokens must reproduce. (Where a
    prompt is cut changes llama.cpp's arithmetic in the last bits, and a greedy answer can
    follow: a reference prefilled whole is not the same computation.)"""
    model._cache[slot].clear()
    llama_cpp.llama_memory_seq_rm(model._mem, slot, -1, -1)
    greedy(model, slot, prompt[:at], n=1, partition="cold")  # (the one sampled: not fed)
    out, cached = greedy(model, slot, prompt, n=12, partition="cold")
    assert cached == at
    return out


def test_blocks_put_back_into_another_slot_continue_as_the_cold_prompt(model):
    prompt = model.tokenize(LIGHTHOUSE, add_bos=True)
    greedy(model, 1, prompt, n=12)
    state = llama_state.parse(_get(model._ctx.ctx, 1), 1)
    assert state.cells == len(model._cache[1])
    no_flash = model.load_params["flash_attn"] == llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    assert state.layout.v_trans == no_flash  # (each branch of the layout is exercised)
    blocks = (len(prompt) - 1) // B
    cold = _cold_split(model, 0, prompt, blocks * B)
    blob = llama_state.assemble(state.layout, [state.block(i * B, (i + 1) * B)
                                               for i in range(blocks)], B, 2)
    src = ctypes.cast(ctypes.c_char_p(blob), ctypes.POINTER(ctypes.c_uint8))
    assert llama_cpp.llama_state_seq_set_data(model._ctx.ctx, src, len(blob), 2) == len(blob)
    model._cache[2][:] = prompt[:blocks * B]  # what the slot's KV now holds
    warm, cached = greedy(model, 2, prompt, n=12)
    assert cached == blocks * B and warm == cold
    # The assembled blob is what llama.cpp itself writes for that sequence.
    model._cache[2][:] = prompt[:blocks * B]
    llama_cpp.llama_memory_seq_rm(model._mem, 2, blocks * B, -1)
    assert _get(model._ctx.ctx, 2) == blob


def test_a_blob_off_the_layout_is_refused(model):
    greedy(model, 0, model.tokenize("Hello there, how are you?", add_bos=True), n=2)
    blob = _get(model._ctx.ctx, 0)
    llama_state.parse(blob, 0)
    with pytest.raises(LayoutError, match="past the layout"):
        llama_state.parse(blob + b"\0" * 8, 0)  # (as a SWA cache's second section is)
    with pytest.raises(LayoutError, match="ends"):
        llama_state.parse(blob[:-1], 0)
    with pytest.raises(LayoutError, match="another sequence"):
        llama_state.parse(blob, 1)
    state = llama_state.parse(blob, 0)
    with pytest.raises(LayoutError, match="wrong size"):
        llama_state.assemble(state.layout, [b"\0" * 3], B, 0)
