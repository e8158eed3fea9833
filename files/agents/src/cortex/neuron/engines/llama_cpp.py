"""The llama-cpp-python engine (default)."""

from __future__ import annotations

import ctypes
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import llama_cpp

from cortex.neuron.engines import llama_progress
from cortex.neuron.engines.base import Engine, GenerationRequest, LoadedModel, TokenEvent


class LlamaCppEngine(Engine):
    name = "llama_cpp"

    def load(self, path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int,
             devices: list[int], has_gpu: bool,
             progress: Callable[[float], None] | None = None) -> LoadedModel:
        kwargs: dict = {}
        if has_gpu and devices:
            if len(devices) == 1:
                # One named device: keep the whole model there.
                kwargs.update(split_mode=llama_cpp.LLAMA_SPLIT_MODE_NONE, main_gpu=devices[0])
            else:
                split = [0.0] * (max(devices) + 1)
                for d in devices:
                    split[d] = 1.0
                kwargs.update(split_mode=llama_cpp.LLAMA_SPLIT_MODE_LAYER, main_gpu=devices[0],
                              tensor_split=split)
        threads = n_threads or len(os.sched_getaffinity(0))
        with llama_progress.reporting(progress):
            llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                n_gpu_layers=n_gpu_layers if has_gpu else 0, verbose=False, **kwargs)
        return LlamaCppModel(llm)


class LlamaCppModel(LoadedModel):
    def __init__(self, llm: llama_cpp.Llama) -> None:
        self.llm = llm
        self.metadata = dict(llm.metadata)
        self.n_ctx = llm.n_ctx()
        self.n_ctx_train = llm._model.n_ctx_train()
        self._vocab = llm._model.vocab
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        state = llama_cpp.llama_state_get_size(llm._ctx.ctx)
        self.size_mb = (llm._model.size() + state) // 2**20

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm._model.token_get_text(token)

    @property
    def bos_token_id(self) -> int:
        return self.llm.token_bos()

    @property
    def eos_token_id(self) -> int:
        return self.llm.token_eos()

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(256)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 256, 0, False)
            piece = self._pieces[token] = bytes(buf[: max(n, 0)])
        return piece

    def _is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
        return eog

    def generate(self, req: GenerationRequest) -> Iterator[TokenEvent]:
        llm = self.llm
        # The KV cache keeps the previous prompt: llama-cpp-python reuses the common prefix.
        self.cached_tokens = _common_prefix(llm.input_ids[: llm.n_tokens], req.prompt_tokens)
        if self.cached_tokens == len(req.prompt_tokens):
            self.cached_tokens -= 1  # the last prompt token is evaluated again for its logits
        # A sampling seed, not a secret: random is right here.
        llm.set_seed(req.seed if req.seed is not None else random.getrandbits(31))  # nosec B311
        produced = 0
        gen = llm.generate(
            req.prompt_tokens, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
            temp=req.temperature, repeat_penalty=req.repeat_penalty,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            reset=True)
        try:
            for token in gen:
                if req.cancel.is_set():
                    return
                eog = self._is_eog(token)
                yield TokenEvent(token, b"" if eog else self._piece(token), eog)
                produced += 1
                if eog or produced >= req.max_tokens or llm.n_tokens >= self.n_ctx - 1:
                    return
        finally:
            gen.close()

    def close(self) -> None:
        self.llm.close()
        self.llm = None  # type: ignore[assignment]


def _common_prefix(a, b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
