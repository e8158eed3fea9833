"""Embeddings with llama.cpp: a context of their own beside a model's generation context.

The generation context keeps no pooling and its KV cells hold the slots' prompt caches, so
embeddings get a second context on the same weights: `embeddings = True`, the pooling the
GGUF names (`<arch>.pooling_type`; mean where it names none, as for chat models), one
unified KV cache that is cleared before each decode. Several inputs share one llama_batch
as separate sequences, and llama.cpp pools each into one vector.
"""

from __future__ import annotations

import llama_cpp
import numpy as np

from cortex.neuron import fence

# Tokens per decode: as a prompt chunk, so an embedding batch holds up the model's chat
# sequences no longer than a prefill step does. A longer input goes alone (it cannot split).
BATCH_TOKENS = 512
MAX_SEQS = 64  # inputs per decode

POOLING = {llama_cpp.LLAMA_POOLING_TYPE_MEAN: "mean", llama_cpp.LLAMA_POOLING_TYPE_CLS: "cls",
           llama_cpp.LLAMA_POOLING_TYPE_LAST: "last", llama_cpp.LLAMA_POOLING_TYPE_RANK: "rank"}


def pooling_of(metadata: dict[str, str]) -> int:
    """The pooling the GGUF names; mean where it names none (or "none": a vector per token
    is no answer to /v1/embeddings)."""
    arch = metadata.get("general.architecture", "")
    raw = metadata.get(f"{arch}.pooling_type", "")
    value = int(raw) if raw.isdigit() else llama_cpp.LLAMA_POOLING_TYPE_NONE
    return value if value in POOLING else llama_cpp.LLAMA_POOLING_TYPE_MEAN


class EmbeddingError(RuntimeError):
    pass


class Embedder:
    """One embeddings context; only the model's scheduler thread calls `embed`."""

    def __init__(self, model: fence.LlamaModel, *, n_ctx: int, pooling: int,
                 threads: int) -> None:
        cp = llama_cpp.llama_context_default_params()
        # A whole input is one ubatch: pooling sees every token of a sequence at once.
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
        cp.n_seq_max = min(MAX_SEQS, int(llama_cpp.llama_max_parallel_sequences()))
        cp.kv_unified = True  # the sequences of one decode share the n_ctx cells
        cp.embeddings = True
        cp.pooling_type = pooling
        cp.n_threads = cp.n_threads_batch = threads
        self._ctx = fence.LlamaContext(model=model, params=cp, verbose=False)
        self._mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx.ctx))
        self._seqs = int(llama_cpp.llama_n_seq_max(self._ctx.ctx))
        self.dim = int(llama_cpp.llama_model_n_embd_out(model.model))
        self._batch: llama_cpp.llama_batch | None = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)

    def embed(self, inputs: list[list[int]]) -> list[np.ndarray]:
        """Pooled vectors of the leading inputs that fit one decode (at least the first)."""
        b = self._batch
        if b is None:
            raise EmbeddingError("embed on a closed context")
        budget = min(BATCH_TOKENS, self.n_ctx)
        n = count = 0
        for toks in inputs:
            if count and (n + len(toks) > budget or count == self._seqs):
                break
            if len(toks) > self.n_ctx - n:
                raise EmbeddingError(f"an input of {len(toks)} tokens is over {self.n_ctx}")
            for pos, tok in enumerate(toks):
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, pos, 1
                b.seq_id[n][0] = count
                b.logits[n] = True  # pooling reads every token's output
                n += 1
            count += 1
        b.n_tokens = n
        llama_cpp.llama_memory_clear(self._mem, True)
        rc = llama_cpp.llama_decode(self._ctx.ctx, b)
        if rc != 0:
            raise EmbeddingError(f"llama_decode failed ({rc}) on {count} input(s), {n} tokens")
        out = []
        for seq in range(count):
            ptr = llama_cpp.llama_get_embeddings_seq(self._ctx.ctx, seq)
            if not ptr:
                raise EmbeddingError(f"llama.cpp gave no pooled vector for sequence {seq}")
            out.append(np.ctypeslib.as_array(ptr, shape=(self.dim,)).copy())
        return out

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
