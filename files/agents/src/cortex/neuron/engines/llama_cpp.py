"""The llama-cpp-python engine (default): one context, `n_slots` sequences, one batch a step.

Built on llama-cpp-python's low-level API because its `Llama` class decodes one sequence at
a time (measured on 2 cores, SmolLM2: 4 streams through it = 1.02x serial; one llama_batch
holding 4 sequences = 1.77x). The KV cache is split per sequence (kv_unified=False, faster on
CPU when sequences share no prefix), so the context is n_ctx x n_slots and every slot keeps
the configured n_ctx. Sampling is llama.cpp's sampler chain, one chain per sequence.
Embeddings use a second context (engines/llama_embed.py), made on first use, or at load for
a model loaded for embeddings alone (which then has no generation context).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from cortex.neuron import fence
from cortex.neuron.engines import llama_progress, llama_sessions
from cortex.neuron.engines.base import (
    Engine,
    GenerationRequest,
    LoadedModel,
    Sequence,
    TokenEvent,
)
from cortex.neuron.engines.llama_embed import POOLING, Embedder, pooling_of
from cortex.neuron.engines.llama_state import Layout, LayoutError
from cortex.neuron.session_cache import CacheView

log = logging.getLogger(__name__)

N_BATCH = 512  # tokens per llama_decode: prompts are prefilled in chunks of this size
PENALTY_LAST_N = 64  # as llama-cpp-python's Llama (last_n_tokens_size)

_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        fence.set_verbose(False)
        llama_cpp.llama_backend_init()
        _backend_ready = True


class DecodeError(RuntimeError):
    pass


class LlamaCppEngine(Engine):
    name = "llama_cpp"

    def load(self, path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int,
             devices: list[int], has_gpu: bool, n_slots: int = 1,
             embeddings_only: bool = False,
             progress: Callable[[float], None] | None = None) -> LoadedModel:
        _init_backend()
        if not path.is_file():
            raise ValueError(f"model path does not exist: {path}")
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = (0x7FFFFFFF if n_gpu_layers == -1 else n_gpu_layers) if has_gpu else 0
        split = None
        if has_gpu and devices:
            if len(devices) == 1:
                # One named device: keep the whole model there.
                mp.split_mode = llama_cpp.LLAMA_SPLIT_MODE_NONE
                mp.main_gpu = devices[0]
            else:
                split = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)()
                for d in devices:
                    split[d] = 1.0
                mp.split_mode = llama_cpp.LLAMA_SPLIT_MODE_LAYER
                mp.main_gpu = devices[0]
                mp.tensor_split = split
        # The ctypes thunk must outlive the load: llama.cpp holds a bare pointer to it.
        reporter = llama_progress.callback(progress)
        if reporter is not None:
            mp.progress_callback = reporter
        model = fence.LlamaModel(path_model=str(path), params=mp, verbose=False)
        del reporter  # the load is over: llama.cpp calls it no more
        threads = n_threads or len(os.sched_getaffinity(0))
        if embeddings_only:
            try:
                return LlamaCppModel(model, None, 0, split, threads=threads, n_ctx=n_ctx)
            except Exception:
                model.close()
                raise
        n_slots = max(1, min(n_slots, int(llama_cpp.llama_max_parallel_sequences())))
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = n_ctx * n_slots
        cp.n_batch = cp.n_ubatch = max(N_BATCH, n_slots)
        cp.n_seq_max = n_slots
        cp.kv_unified = False
        cp.n_threads = cp.n_threads_batch = threads
        try:
            ctx = fence.LlamaContext(model=model, params=cp, verbose=False)
        except Exception:
            model.close()
            raise
        out = LlamaCppModel(model, ctx, n_slots, split, threads=threads)
        # What a saved KV state is valid under, beside the file (session cache).
        out.load_params = {"n_ctx": out.n_ctx, "type_k": cp.type_k, "type_v": cp.type_v,
                           "flash_attn": cp.flash_attn_type, "n_gpu_layers": mp.n_gpu_layers,
                           "devices": devices if has_gpu else [],
                           "llama_cpp": llama_cpp.__version__}
        return out


class _Seq(Sequence):
    sampler: ctypes.c_void_p | None = None
    grammar: ctypes.c_void_p | None = None  # kept out of the chain: see LlamaCppModel._sample
    pending: list[int]  # prompt tokens not yet in the KV cache
    next_token: int = -1  # sampled, to be fed at the next step
    fed: list[int]  # tokens put in this step's batch
    idx: int = -1  # this step's batch index whose logits are sampled, -1 for none


class LlamaCppModel(LoadedModel):
    def __init__(self, model: fence.LlamaModel, ctx: fence.LlamaContext | None,
                 n_slots: int, keep: object = None, *, threads: int, n_ctx: int = 0) -> None:
        """`ctx` None: embeddings alone, `n_ctx` tokens an input (the context made now)."""
        self._model = model
        self._ctx = ctx
        self._keep = keep  # the tensor_split array must outlive the model
        self._threads = threads
        self.metadata = model.metadata()
        self.n_slots = n_slots
        self.n_ctx = int(llama_cpp.llama_n_ctx_seq(ctx.ctx)) if ctx is not None else n_ctx
        self.n_ctx_train = model.n_ctx_train()
        self._vocab = model.vocab
        self.n_vocab = self._n_vocab = model.n_vocab()
        self._pooling = pooling_of(self.metadata)
        self.pooling = POOLING[self._pooling]
        # A reranker's pooled output is a score, not a vector: it cannot serve embeddings.
        self.embedding_ctx = 0 if self.pooling == "rank" else self.n_ctx
        self.embedding_dim = int(llama_cpp.llama_model_n_embd_out(model.model))
        self._embedder: Embedder | None = None
        self._layout: Layout | None = None
        self._mem = None
        self._batch: llama_cpp.llama_batch | None = None
        self._n_batch = 0
        if ctx is not None:
            self._mem = llama_cpp.llama_get_memory(ctx.ctx)
            self._n_batch = int(llama_cpp.llama_n_batch(ctx.ctx))
            self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self._cache: list[list[int]] = [[] for _ in range(n_slots)]  # tokens in each slot's KV
        self._owner: list[str] = [""] * n_slots  # the partition whose tokens those are
        self._keep: list[float] = [0.0] * n_slots  # pinned in the session cache until then
        self._states: llama_sessions.SlotStates | None = None
        self.load_params: dict[str, Any] = {}
        # Candidate buffers for grammar-constrained sampling (the scheduler thread's alone).
        self._cur = fence.LlamaTokenDataArray(n_vocab=self._n_vocab)
        self._one_data = (llama_cpp.llama_token_data * 1)()
        self._one = llama_cpp.llama_token_data_array(data=self._one_data, size=1,
                                                     selected=-1, sorted=False)
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        state = llama_cpp.llama_state_get_size(ctx.ctx) if ctx is not None else 0
        self.size_mb = (model.size() + state) // 2**20
        if ctx is None:
            if not self.embedding_ctx:
                raise ValueError(f"this model's pooling is {self.pooling!r} (a reranker): it "
                                 "scores, it does not embed")
            self._embeddings()

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos, special)

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._model.token_get_text(token)

    @property
    def bos_token_id(self) -> int:
        return self._model.token_bos()

    @property
    def eos_token_id(self) -> int:
        return self._model.token_eos()

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 256, 0,
                                               token in self.shown_tokens)
            piece = self._pieces[token] = bytes(buf[: max(n, 0)])
        return piece

    def _is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
        return eog

    # -- slots ---------------------------------------------------------------------------
    def prefix_match(self, slot: int, tokens: list[int], partition: str = "") -> int:
        if self._owner[slot] != partition:
            return 0
        return _common_prefix(self._cache[slot], tokens)

    def cached_len(self, slot: int) -> int:
        return len(self._cache[slot])

    # -- the session cache -------------------------------------------------------------
    def cache_identity(self) -> dict[str, Any] | None:
        if self._ctx is None or not self.n_slots or self._batch is None:
            return None
        try:
            layout = llama_sessions.probe(self._ctx.ctx, self._mem, self._batch,
                                          max(self._model.token_bos(), 0))
        except LayoutError as exc:
            log.warning("session cache off for this model: its KV state is not one this "
                        "neuron can cut into blocks (%s)", exc)
            return None
        self._layout = layout
        return {**self.load_params, "layout": layout.signature()}

    def attach_cache(self, view: CacheView) -> None:
        if self._ctx is not None and self._layout is not None:
            self._states = llama_sessions.SlotStates(self._ctx.ctx, self._mem, view,
                                                     self._layout)

    def _save(self, slot: int) -> None:
        if self._states is not None and self._cache[slot]:
            self._states.save(slot, self._owner[slot], self._cache[slot], self._keep[slot])

    def begin(self, slot: int, req: GenerationRequest) -> Sequence:
        prompt = req.prompt_tokens
        if not prompt:
            raise ValueError("an empty prompt has nothing to generate from")
        cache = self._cache[slot]
        # Keep the longest common prefix in the KV (only the same partition's); the last
        # prompt token is always evaluated again, for its logits.
        common = min(self.prefix_match(slot, prompt, req.partition), len(prompt) - 1)
        if self._states is not None:
            if common < len(cache):  # the slot's other tokens are about to go: keep them
                self._save(slot)
            keep = time.time() + req.cache_ttl if req.cache_ttl else 0.0
            held = self._states.restore(slot, req.partition, prompt[:len(prompt) - 1],
                                        common, keep)
            if held is not None:  # the KV now holds exactly prompt[:held]
                cache[:] = prompt[:held]
                common = held
            self._keep[slot] = keep
        self._owner[slot] = req.partition
        if common < len(cache) and not llama_cpp.llama_memory_seq_rm(
                self._mem, slot, common, -1):
            llama_cpp.llama_memory_seq_rm(self._mem, slot, -1, -1)
            common = 0
        del cache[common:]
        seq = _Seq(slot, req, common)
        seq.pending = list(prompt[common:])
        seq.fed = []
        if req.grammar:
            seq.grammar = self._grammar(req.grammar)
            if not seq.grammar:
                raise ValueError("the response_format grammar did not parse")
        seq.sampler = self._sampler(req, prompt)
        return seq

    def _sampler(self, req: GenerationRequest, prompt: list[int]) -> ctypes.c_void_p:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

        def add(s: ctypes.c_void_p) -> None:
            llama_cpp.llama_sampler_chain_add(chain, s)

        if req.repeat_penalty != 1.0 or req.frequency_penalty or req.presence_penalty:
            pen = llama_cpp.llama_sampler_init_penalties(
                self._n_vocab, PENALTY_LAST_N, req.repeat_penalty, req.frequency_penalty,
                req.presence_penalty)
            add(pen)
            for t in prompt[-PENALTY_LAST_N:]:  # the prompt's tail counts, as in llama.cpp
                llama_cpp.llama_sampler_accept(pen, t)
        if req.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return chain
        if req.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(req.top_k))
        if req.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(req.top_p, 1))
        if req.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(req.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(req.temperature))
        # A sampling seed, not a secret: random is right here.
        seed = req.seed if req.seed is not None else random.getrandbits(31)  # nosec B311
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _grammar(self, gbnf: str) -> ctypes.c_void_p | None:
        return llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")

    def check_grammar(self, grammar: str) -> None:
        sampler = self._grammar(grammar)
        if not sampler:
            from cortex.core.errors import BadRequest

            raise BadRequest("response_format: the schema gave a grammar llama.cpp rejects",
                             code="invalid_response_format", param="response_format")
        llama_cpp.llama_sampler_free(sampler)

    def step(self, seqs: list[Sequence]) -> list[tuple[Sequence, TokenEvent]]:
        """One llama_decode: each decoding sequence's next token, then prompt chunks."""
        b = self._batch
        if b is None:
            raise RuntimeError("step on a closed model")
        n = 0

        def put(tok: int, pos: int, slot: int, logits: bool) -> None:
            nonlocal n
            b.token[n] = tok
            b.pos[n] = pos
            b.n_seq_id[n] = 1
            b.seq_id[n][0] = slot
            b.logits[n] = logits
            n += 1

        # By slot: llama.cpp cuts a batch over a split KV cache into ubatches of consecutive
        # sequence ids, one graph each; out of order, a decode step ran as several (8
        # streams: 154 tok/s against 195 in order, bench/neuron_concurrency.py).
        seqs = sorted(seqs, key=lambda s: s.slot)
        active: list[_Seq] = []
        for s in seqs:
            s.fed, s.idx = [], -1
            if s.prefilled:
                s.idx = n
                s.fed = [s.next_token]
                put(s.next_token, s.n_past, s.slot, True)
                active.append(s)
        for s in seqs:
            budget = self._n_batch - n
            if s.prefilled or budget <= 0:
                continue
            chunk = s.pending[:budget]
            for i, tok in enumerate(chunk):
                put(tok, s.n_past + i, s.slot, False)
            s.fed = chunk
            if len(chunk) == len(s.pending):
                b.logits[n - 1] = True
                s.idx = n - 1
            active.append(s)
        if not n:
            return []
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx.ctx, b)
        if rc != 0:
            for s in active:  # what this step left in the KV is unknown: drop those slots
                llama_cpp.llama_memory_seq_rm(self._mem, s.slot, -1, -1)
                self._cache[s.slot].clear()
            raise DecodeError(f"llama_decode failed ({rc}) on a batch of {n} tokens")
        out: list[tuple[Sequence, TokenEvent]] = []
        for s in active:
            self._cache[s.slot].extend(s.fed)
            s.n_past += len(s.fed)
            if not s.prefilled:
                del s.pending[: len(s.fed)]
            if s.idx < 0:
                continue
            s.prefilled = True
            tok = self._sample(s)
            s.next_token = tok
            eog = self._is_eog(tok)
            out.append((s, TokenEvent(tok, b"" if eog else self._piece(tok), eog)))
        return out

    def _sample(self, s: _Seq) -> int:
        if s.grammar is None:
            return llama_cpp.llama_sampler_sample(s.sampler, self._ctx.ctx, s.idx)
        # As llama.cpp's common sampler: sample freely and check that one token against the
        # grammar; only when it is rejected, apply the grammar to the whole vocabulary (the
        # costly part) and sample again.
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx.ctx, s.idx),
                                       shape=(self._n_vocab,))
        cur = self._cur
        cur.copy_logits(logits)
        llama_cpp.llama_sampler_apply(s.sampler, ctypes.byref(cur.candidates))
        tok = int(cur.candidates_data.id[cur.candidates.selected])
        one = self._one
        one.data[0].id, one.data[0].logit, one.data[0].p = tok, 1.0, 0.0
        one.size, one.selected, one.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(s.grammar, ctypes.byref(one))
        if not math.isfinite(one.data[0].logit):
            cur.copy_logits(logits)
            llama_cpp.llama_sampler_apply(s.grammar, ctypes.byref(cur.candidates))
            llama_cpp.llama_sampler_apply(s.sampler, ctypes.byref(cur.candidates))
            tok = int(cur.candidates_data.id[cur.candidates.selected])
        llama_cpp.llama_sampler_accept(s.grammar, tok)
        llama_cpp.llama_sampler_accept(s.sampler, tok)
        return tok

    # -- embeddings ----------------------------------------------------------------------
    def _embeddings(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self._model, n_ctx=self.embedding_ctx,
                                      pooling=self._pooling, threads=self._threads)
        return self._embedder

    def embed(self, inputs: list[list[int]]) -> list[np.ndarray]:
        return self._embeddings().embed(inputs)

    def end(self, seq: Sequence) -> None:
        for name in ("sampler", "grammar"):
            sampler = getattr(seq, name)
            if sampler is not None:
                llama_cpp.llama_sampler_free(sampler)
                setattr(seq, name, None)

    def close(self) -> None:
        """Free everything; the slots' tokens go to the session cache first (a reload of
        the same file with the same parameters gets them back)."""
        if self._states is not None:
            for slot in range(self.n_slots):
                try:
                    self._save(slot)
                except Exception:  # an unload must free the model whatever happens
                    log.exception("session cache: could not save slot %d at unload", slot)
            self._states = None
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        if self._ctx is not None:
            self._ctx.close()
        self._model.close()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
