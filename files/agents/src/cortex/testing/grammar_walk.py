"""A GBNF grammar walked by llama.cpp's own grammar sampler, one token at a time: what a reply
may be, checked on texts written to the edge of the rules rather than on what a model happens
to sample. The tiny models' vocabulary has a token for each ASCII character and one for each
byte (ids 3..258), so any text can be fed."""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import llama_cpp
from llama_cpp import _internals as internals

BYTE_TOKENS = 3  # the tiny vocabulary's id of byte 0x00


class GrammarWalker:
    """Feeds text to a grammar a character (a tiny-vocabulary token, or the byte tokens of a
    character outside ASCII) at a time."""

    def __init__(self, path: Path) -> None:
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        self.vocab = self.model.vocab
        self.eos = self.model.token_eos()

    def accepts(self, grammar: str, text: str) -> bool:
        """Whether `text`, then end of generation, is a reply the grammar allows."""
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        assert sampler, grammar
        data = (llama_cpp.llama_token_data * 1)()
        one = llama_cpp.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
        try:
            for token in [*self.tokens(text), self.eos]:
                data[0].id, data[0].logit, data[0].p = token, 1.0, 0.0
                llama_cpp.llama_sampler_apply(sampler, ctypes.byref(one))
                if not math.isfinite(data[0].logit):
                    return False
                llama_cpp.llama_sampler_accept(sampler, token)
            return True
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def tokens(self, text: str) -> list[int]:
        # byte tokens outside ASCII: DeepSeek's fullwidth bars, and its "▁", which the tiny
        # vocabulary would read as a space
        return [t for c in text for t in (
            self.model.tokenize(c.encode(), False, False) if c.isascii()
            else [BYTE_TOKENS + b for b in c.encode()])]

    def close(self) -> None:
        self.model.close()
