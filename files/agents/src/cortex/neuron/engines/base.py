"""The engine interface: what the neuron needs from an inference backend.

A loaded model offers `n_slots` sequences. The model's scheduler thread (the only thread that
decodes) calls `begin` to place a request on a free slot, `step` to advance every active
sequence by one token in one batch, and `end` to free the slot. Engines that cannot batch
implement `generate` alone and get one slot, stepped through their generator.
Embeddings (`embed`) run on the same scheduler thread, between steps, in a context of their
own; engines that cannot embed leave `embedding_ctx` at 0.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortex.neuron.config import SamplingDefaults

SAMPLING = SamplingDefaults()


@dataclass
class GenerationRequest:
    prompt_tokens: list[int]
    max_tokens: int
    # Sampling a caller leaves out: the neuron's defaults, whose one owner is the config.
    temperature: float = SAMPLING.temperature
    top_p: float = SAMPLING.top_p
    top_k: int = SAMPLING.top_k
    min_p: float = SAMPLING.min_p
    repeat_penalty: float = SAMPLING.repeat_penalty
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    grammar: str | None = None  # GBNF the output must match (response_format)
    # Whose cache this prompt may reuse and fill: the account (X-Helexa-Account-Id), "" for
    # the anonymous partition. A cached prefix is never shared between partitions.
    partition: str = ""
    # Anthropic cache_control ttl: keep this prompt's cached blocks at least this many
    # seconds where the session cache's budget allows (0: least recently used goes first).
    cache_ttl: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class TokenEvent:
    token: int
    piece: bytes  # the token's text bytes (may be a partial UTF-8 sequence)
    eog: bool  # end of generation (EOS, <|im_end|>, ...): not part of the output


class Sequence:
    """One request on one slot. Engines keep their per-sequence state on a subclass."""

    def __init__(self, slot: int, req: GenerationRequest, cached_tokens: int) -> None:
        self.slot = slot
        self.req = req
        self.cached_tokens = cached_tokens  # prompt tokens reused from the slot's cache
        self.n_past = cached_tokens  # tokens of this sequence in the KV cache
        self.prefilled = False  # the whole prompt has been evaluated
        self._gen: Iterator[TokenEvent] | None = None


class LoadedModel(ABC):
    """A model in memory. Only its scheduler thread calls begin/step/end/generate."""

    n_ctx: int  # context per sequence
    n_ctx_train: int
    metadata: dict[str, Any]
    size_mb: int  # weights + context buffers, what placement should count
    n_slots: int = 1  # 0: loaded for embeddings alone
    n_vocab: int = 0
    embedding_ctx: int = 0  # the longest input `embed` takes; 0: this model cannot embed
    embedding_dim: int = 0
    pooling: str = ""  # how token states become one vector: mean, cls, last (or rank)
    # Special tokens whose text the output keeps: a model family's markers (gpt-oss's
    # <|channel|>, Mistral's [TOOL_CALLS]) that its parser reads. Others are not rendered.
    shown_tokens: frozenset[int] = frozenset()

    @abstractmethod
    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]: ...

    def generate(self, req: GenerationRequest) -> Iterator[TokenEvent]:
        """Yield sampled tokens until end of generation (serial engines only)."""
        raise NotImplementedError

    # -- slots (the default: one slot, stepped through `generate`) -----------------------
    def prefix_match(self, slot: int, tokens: list[int], partition: str = "") -> int:
        """How many leading `tokens` the slot's cache holds for `partition` (0 where the
        slot holds another partition's tokens)."""
        return 0

    def check_grammar(self, grammar: str) -> None:
        """Raise ApiError 400 unless this model can enforce the grammar."""
        from cortex.core.errors import BadRequest

        raise BadRequest("this model's engine cannot enforce response_format; load it with "
                         "harness 'llama_cpp'", code="invalid_response_format",
                         param="response_format")

    def cached_len(self, slot: int) -> int:
        """Tokens the slot's cache holds."""
        return 0

    # -- the session cache (engines that cannot save a slot's KV state keep the defaults) --
    def cache_identity(self) -> dict[str, Any] | None:
        """What a saved KV state of this model is valid under beside its file (load
        parameters, KV layout), or None: this model's slots cannot be saved."""
        return None

    def attach_cache(self, view: Any) -> None:
        """Save slots to, and restore prompts from, this view of the session cache."""
        return None

    def begin(self, slot: int, req: GenerationRequest) -> Sequence:
        seq = Sequence(slot, req, 0)
        seq._gen = self.generate(req)
        return seq

    def step(self, seqs: list[Sequence]) -> list[tuple[Sequence, TokenEvent]]:
        """Advance every sequence by one step; a sequence still in prefill may yield nothing."""
        out = []
        for s in seqs:
            ev = next(s._gen, None) if s._gen is not None else None
            s.prefilled = True
            out.append((s, ev if ev is not None else TokenEvent(-1, b"", True)))
        return out

    def end(self, seq: Sequence) -> None:
        if seq._gen is not None:
            close = getattr(seq._gen, "close", None)
            if close is not None:
                close()
            seq._gen = None

    def embed(self, inputs: list[list[int]]) -> list[Any]:
        """Embed as many of `inputs` (from the first) as one decode holds, at least one;
        return their pooled vectors (float32 arrays, not normalized)."""
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None: ...

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def add_bos(self) -> bool:
        return str(self.metadata.get("tokenizer.ggml.add_bos_token", "true")).lower() == "true"

    @abstractmethod
    def token_text(self, token: int) -> str:
        """A special token's text (bos/eos) for chat templates."""

    @property
    @abstractmethod
    def bos_token_id(self) -> int: ...

    @property
    @abstractmethod
    def eos_token_id(self) -> int: ...


class Engine(ABC):
    name: str

    @abstractmethod
    def load(self, path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int,
             devices: list[int], has_gpu: bool, n_slots: int = 1,
             embeddings_only: bool = False,
             progress: Callable[[float], None] | None = None) -> LoadedModel:
        """Load `path` with `n_slots` sequences (none, and an embeddings context made at
        once, when `embeddings_only`); `progress`, where the backend can, hears the share
        done (0..1)."""
