"""The engine interface: what the neuron needs from an inference backend."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GenerationRequest:
    prompt_tokens: list[int]
    max_tokens: int
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class TokenEvent:
    token: int
    piece: bytes  # the token's text bytes (may be a partial UTF-8 sequence)
    eog: bool  # end of generation (EOS, <|im_end|>, ...): not part of the output


class LoadedModel(ABC):
    """A model in memory. One generation at a time: the model's worker serialises calls."""

    n_ctx: int
    n_ctx_train: int
    metadata: dict[str, Any]
    size_mb: int  # weights + context buffers, what placement should count
    cached_tokens: int = 0  # prompt tokens reused from the previous generation's cache

    @abstractmethod
    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]: ...

    @abstractmethod
    def generate(self, req: GenerationRequest) -> Iterator[TokenEvent]:
        """Yield sampled tokens until end of generation, `max_tokens`, or `req.cancel`."""

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
             devices: list[int], has_gpu: bool,
             progress: Callable[[float], None] | None = None) -> LoadedModel:
        """Load `path`; `progress`, where the backend can, hears the share done (0..1)."""
