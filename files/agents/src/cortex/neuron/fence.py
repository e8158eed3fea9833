"""Every reach of the neuron process into a library's internals, in one place, checked at
import: a version bump that moves one of them fails here (and in test_fence.py) at start,
not in the middle of a request.

- llama-cpp-python's private `_internals` wrappers (model, context, candidate buffers) and
  `_logger.set_verbose`: the engines drive llama.cpp through them beside the public C API
  (its `Llama` class decodes one sequence at a time: see engines/llama_cpp.py).
- gunicorn's `Worker.handle_exit` and `Worker.wsgi`: `neuron serve` wraps the first to
  refuse new work as soon as SIGTERM arrives (serve.py).
- llama.cpp's KV state layout cannot be checked without a model: engines/llama_state.py
  checks it for every model at load (a probe) and every saved blob to the byte.
"""

from __future__ import annotations

import inspect

import gunicorn.workers.base as _gunicorn_workers
import llama_cpp
from llama_cpp import _internals, _logger

LlamaModel = _internals.LlamaModel
LlamaContext = _internals.LlamaContext
LlamaTokenDataArray = _internals.LlamaTokenDataArray
set_verbose = _logger.set_verbose
Worker = _gunicorn_workers.Worker

# Methods used, and attributes the classes' own code sets (read from their source, since no
# instance exists at import).
METHODS: dict[type, tuple[str, ...]] = {
    LlamaModel: ("metadata", "n_vocab", "n_ctx_train", "size", "tokenize", "token_get_text",
                 "token_bos", "token_eos", "close"),
    LlamaContext: ("close",),
    LlamaTokenDataArray: ("copy_logits",),
    Worker: ("handle_exit",),
}
ATTRIBUTES: dict[type, tuple[str, ...]] = {
    LlamaModel: ("model", "vocab"),
    LlamaContext: ("ctx",),
    LlamaTokenDataArray: ("candidates", "candidates_data"),
    Worker: ("wsgi",),
}
# The C API the engines call: public, but a rename must fail at start too.
C_API = (
    "llama_backend_init", "llama_batch_init", "llama_batch_free", "llama_decode",
    "llama_context_default_params", "llama_model_default_params", "llama_get_memory",
    "llama_memory_seq_rm", "llama_memory_clear", "llama_n_batch", "llama_n_ctx",
    "llama_n_ctx_seq", "llama_n_seq_max", "llama_max_parallel_sequences",
    "llama_get_logits_ith", "llama_get_embeddings_seq", "llama_model_n_embd_out",
    "llama_token_to_piece", "llama_vocab_is_eog", "llama_state_get_size",
    "llama_state_seq_get_size", "llama_state_seq_get_data", "llama_state_seq_set_data",
    "llama_sampler_chain_init", "llama_sampler_chain_default_params",
    "llama_sampler_chain_add", "llama_sampler_sample", "llama_sampler_apply",
    "llama_sampler_accept", "llama_sampler_free", "llama_sampler_init_greedy",
    "llama_sampler_init_dist", "llama_sampler_init_temp", "llama_sampler_init_top_k",
    "llama_sampler_init_top_p", "llama_sampler_init_min_p", "llama_sampler_init_penalties",
    "llama_sampler_init_grammar", "llama_progress_callback",
)


def missing(methods: dict[type, tuple[str, ...]] = METHODS,
            attributes: dict[type, tuple[str, ...]] = ATTRIBUTES,
            c_api: tuple[str, ...] = C_API) -> list[str]:
    """What of the above this environment's libraries lack."""
    out = [f"{cls.__module__}.{cls.__qualname__}.{name}()" for cls, names in methods.items()
           for name in names if not callable(getattr(cls, name, None))]
    for cls, names in attributes.items():
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = ""
        out += [f"{cls.__module__}.{cls.__qualname__}.{name}" for name in names
                if f"self.{name} =" not in source]
    out += [f"llama_cpp.{name}" for name in c_api if not hasattr(llama_cpp, name)]
    return out


_missing = missing()
if _missing:
    raise ImportError("this neuron was written against llama-cpp-python "
                      f"{llama_cpp.__version__ if hasattr(llama_cpp, '__version__') else '?'}"
                      " and gunicorn whose internals had " + ", ".join(_missing) +
                      "; pin the versions in constraints.txt or update cortex/neuron/fence.py")
