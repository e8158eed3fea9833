"""The optional ctransformers engine (`harness = "ctransformers"`).

ctransformers has had no release since 2023-09: it loads plain llama/falcon-family GGUF
its bundled ggml understands (no tied embeddings, no Qwen, no newer GGUF features), has no
chat templates and reports load failures as one opaque RuntimeError. The neuron uses it
only where asked, reads the chat template from the GGUF header itself, and turns a failed
load into a clear error that names the limits and the alternative.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

from ctransformers import AutoModelForCausalLM  # the import guard is in engines/__init__

from cortex.neuron import gguf_header
from cortex.neuron.engines.base import Engine, GenerationRequest, LoadedModel, TokenEvent

# Architectures ctransformers' ggml can run from GGUF.
_MODEL_TYPES = {"llama": "llama", "falcon": "falcon", "gpt2": "gpt2", "starcoder": "starcoder",
                "mpt": "mpt", "gptj": "gptj", "gptneox": "gpt_neox"}


class CTransformersEngine(Engine):
    name = "ctransformers"

    def load(self, path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int,
             devices: list[int], has_gpu: bool, n_slots: int = 1,
             embeddings_only: bool = False, progress=None) -> LoadedModel:
        # ctransformers cannot batch (one slot, whatever `parallel` asks), embed, or report
        # load progress (the load shows only its phase).
        if embeddings_only:
            raise ValueError("ctransformers cannot compute embeddings; load the model for "
                             "embeddings with harness 'llama_cpp'")
        meta = gguf_header.read_metadata(path)
        arch = meta.get("general.architecture", "unknown")
        if arch not in _MODEL_TYPES:
            raise ValueError(f"ctransformers cannot run the {arch!r} architecture (it knows "
                             f"{', '.join(sorted(_MODEL_TYPES))}); use harness 'llama_cpp'")
        threads = n_threads or len(os.sched_getaffinity(0))
        try:
            llm = AutoModelForCausalLM.from_pretrained(
                str(path), model_type=_MODEL_TYPES[arch], context_length=n_ctx,
                threads=threads, gpu_layers=n_gpu_layers if has_gpu and n_gpu_layers > 0 else 0)
        except RuntimeError as exc:
            raise ValueError(
                f"ctransformers (last released 2023-09) could not load this {arch} GGUF: "
                f"{exc}. It reads only GGUF its old ggml understands (no tied embeddings, "
                "no newer tensor types); load it with harness 'llama_cpp' instead") from None
        return CTransformersModel(llm, meta, n_ctx)


class CTransformersModel(LoadedModel):
    def __init__(self, llm, meta: dict, n_ctx: int) -> None:
        self.llm = llm
        self.metadata = {k: v for k, v in meta.items() if isinstance(v, str | int | float)}
        self.n_ctx = n_ctx
        self.n_ctx_train = gguf_header.describe(meta)["context_length"] or n_ctx
        self.size_mb = Path(llm.model_path).stat().st_size // 2**20

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        tokens = list(self.llm.tokenize(text, add_bos_token=add_bos))
        return tokens

    def token_text(self, token: int) -> str:
        return self.llm.detokenize([token]) if token >= 0 else ""

    @property
    def bos_token_id(self) -> int:
        return self.llm.bos_token_id

    @property
    def eos_token_id(self) -> int:
        # The GGUF's own end token (e.g. <|im_end|>), which ctransformers does not read.
        return int(self.metadata.get("tokenizer.ggml.eos_token_id", self.llm.eos_token_id))

    def generate(self, req: GenerationRequest) -> Iterator[TokenEvent]:
        produced = 0
        gen = self.llm.generate(
            req.prompt_tokens, top_k=req.top_k or 1, top_p=req.top_p,
            temperature=max(req.temperature, 1e-4), repetition_penalty=req.repeat_penalty,
            # A sampling seed, not a secret: random is right here.
            seed=req.seed if req.seed is not None else random.getrandbits(31),  # nosec B311
            reset=True)
        eos = self.eos_token_id
        try:
            for token in gen:
                if req.cancel.is_set():
                    return
                eog = token == eos or self.llm.is_eos_token(token)
                piece = b"" if eog else self.llm.detokenize([token], decode=False)
                yield TokenEvent(token, piece, eog)
                produced += 1
                if eog or produced >= req.max_tokens:
                    return
        finally:
            gen.close()
        if not req.cancel.is_set():
            # ctransformers ends at its own EOS without yielding it: say so.
            yield TokenEvent(eos, b"", True)

    def close(self) -> None:
        self.llm = None
