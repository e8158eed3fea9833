"""POST /v1/embeddings in OpenAI's shape, computed by the model's scheduler thread.

The HTTP thread checks and tokenizes the inputs (under a lease), counts the embeddings
context's memory before its first use, and waits on an EmbedJob. The scheduler thread runs
it between chat steps: it already owns the model's lifetime (an unload waits for it),
admission (the same queue limits, max_wait and 503s) and the one decode at a time the cores
can take. Vectors are pooled as the GGUF says (mean where it says nothing) and L2-normalized.

A request asks for inputs x dimensions values at most (`max_embedding_values`): 2,048 tiny
inputs are an 8 KB request and, at 1,024 dimensions, a 26 MB reply. The reply is written
by orjson straight from the float32 vectors, a few at a time, so that the HTTP thread hands
the interpreter to the model's thread (and to streams) between writes.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from cortex.core.errors import ApiError, BadRequest
from cortex.neuron.inference import Caller, model_to_serve
from cortex.neuron.jobs import Embedded, EmbedJob
from cortex.neuron.waiter import Waiter

if TYPE_CHECKING:
    from cortex.neuron.composition import Neuron
    from cortex.neuron.engines import LoadedModel

MAX_INPUTS = 2048  # per request, as OpenAI's API
ENCODINGS = ("float", "base64")
ROWS_A_WRITE = 32  # vectors serialised between two chances for other threads to run


def handle(neuron: Neuron, body: dict, caller: Caller) -> Iterator[bytes]:
    """The reply's JSON, in pieces (it may be tens of MB); all checks are made first."""
    loaded = model_to_serve(neuron, body, caller)
    encoding = body.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in ENCODINGS:
        raise BadRequest(f"encoding_format must be 'float' or 'base64', got {encoding!r:.40}",
                         code="invalid_encoding_format", param="encoding_format")
    items = _items(body.get("input"))
    with loaded.lease(then_submit=True) as model:
        if not model.embedding_ctx:
            raise BadRequest(_cannot_embed(loaded.id, model), code="embeddings_unsupported",
                             param="model")
        dim, limit = model.embedding_dim, model.embedding_ctx
        _check_size(len(items), dim, neuron.cfg.max_embedding_values)
        inputs = [_tokens(model, name, item) for name, item in items]
    _check_dimensions(body, dim)
    for (name, _), tokens in zip(items, inputs, strict=True):
        if len(tokens) > limit:
            raise BadRequest(
                f"{name} is {len(tokens)} tokens and this model embeds at most {limit}; "
                "shorten or split it", code="context_length_exceeded", param=name, max=limit,
                estimated_prompt_tokens=len(tokens))
    try:
        neuron.registry.reserve_embeddings(loaded)
        job = EmbedJob(inputs=inputs, principal=caller.principal)
        loaded.scheduler.submit(job)
        waiter = Waiter(loaded, job, neuron.cfg.admission.max_wait_secs)
        try:
            vectors = next(ev.vectors for ev in waiter.events() if isinstance(ev, Embedded))
        finally:
            waiter.release()
        unit = _normalized(vectors)
    except ApiError as exc:
        neuron.metrics.requests.labels(loaded.id, "embeddings", str(exc.status)).inc()
        raise
    neuron.metrics.requests.labels(loaded.id, "embeddings", "200").inc()
    return _reply(loaded.id, unit, encoding, sum(map(len, inputs)))


def _reply(model_id: str, unit: np.ndarray, encoding: str, tokens: int) -> Iterator[bytes]:
    """OpenAI's list of embeddings, ROWS_A_WRITE vectors a piece."""
    yield b'{"object":"list","model":' + orjson.dumps(model_id) + b',"data":['
    for start in range(0, len(unit), ROWS_A_WRITE):
        piece = b",".join(
            orjson.dumps({"object": "embedding", "index": start + i,
                          "embedding": _encode(row, encoding)}, option=orjson.OPT_SERIALIZE_NUMPY)
            for i, row in enumerate(unit[start:start + ROWS_A_WRITE]))
        yield b"," + piece if start else piece
    yield b'],"usage":' + orjson.dumps({"prompt_tokens": tokens, "total_tokens": tokens}) + b"}"


def _items(raw: Any) -> list[tuple[str, str | list]]:
    """The inputs with their names for errors: a string, strings, a token list, token lists."""
    if raw is None:
        raise BadRequest("'input' is required: a string, a list of strings, or token lists",
                         code="missing_input", param="input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw
                                and not isinstance(raw[0], str | list)):
        items = [("input", raw)]  # one text, or one token list
    elif isinstance(raw, list):
        items = [(f"input[{i}]", item) for i, item in enumerate(raw)]
    else:
        raise _bad("input", f"expected a string, a list of strings or token lists, got "
                            f"{type(raw).__name__}")
    if not items:
        raise _bad("input", "is an empty list; send at least one text", code="empty_input")
    if len(items) > MAX_INPUTS:
        raise _bad("input", f"{len(items)} inputs; at most {MAX_INPUTS} a request")
    return items


def _tokens(model: LoadedModel, name: str, item: Any) -> list[int]:
    if isinstance(item, str):
        if not item:
            raise _bad(name, "is an empty string; send some text", code="empty_input")
        # Special tokens as the model's tokenizer adds them (BOS, or BERT's CLS/SEP); text
        # that looks like a control token stays text.
        return model.tokenize(item, add_bos=True, special=False)
    if not isinstance(item, list):
        raise _bad(name, f"expected a string or a list of token ids, got {type(item).__name__}")
    if not item:
        raise _bad(name, "is an empty token list; send at least one token", code="empty_input")
    for i, tok in enumerate(item):
        if isinstance(tok, float) and not math.isfinite(tok):
            raise _bad(f"{name}[{i}]", "is not a finite number; token ids are integers")
        if isinstance(tok, bool) or not isinstance(tok, int):
            got = repr(tok) if isinstance(tok, float) else type(tok).__name__
            raise _bad(f"{name}[{i}]", f"expected an integer token id, got {got}")
        if not 0 <= tok < model.n_vocab:
            raise _bad(f"{name}[{i}]", f"token {tok} is not in this model's vocabulary "
                                       f"(0 to {model.n_vocab - 1})")
    return item


def _check_dimensions(body: dict, dim: int) -> None:
    """OpenAI's `dimensions` shortens vectors of models trained for it; here it must match."""
    want = body.get("dimensions")
    if want is not None and (isinstance(want, bool) or want != dim):
        raise BadRequest(f"dimensions: this model's vectors have {dim}; omit the field or "
                         f"send {dim}", code="invalid_dimensions", param="dimensions")


def _cannot_embed(model_id: str, model: LoadedModel) -> str:
    if model.pooling == "rank":
        return f"{model_id} is a reranker (pooling 'rank'): it scores, it does not embed"
    return f"{model_id}'s engine cannot compute embeddings; load it with harness 'llama_cpp'"


def _check_size(n: int, dim: int, most: int) -> None:
    if n * dim > most:
        raise BadRequest(
            f"input: {n} inputs x {dim} dimensions is {n * dim:,} values, and this neuron "
            f"answers at most {most:,} a request (max_embedding_values): send at most "
            f"{max(1, most // dim)} inputs a request", code="embeddings_too_large",
            param="input", max=most)


def _normalized(vectors: list[np.ndarray]) -> np.ndarray:
    """The vectors as rows of one float32 array, each scaled to length 1 (a zero vector
    stays zero)."""
    unit = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(unit, axis=1, keepdims=True)
    if not np.isfinite(norms).all():
        raise ApiError("the model gave a non-finite embedding", code="embedding_failed")
    np.divide(unit, norms, out=unit, where=norms > 0)
    return unit


def _encode(row: np.ndarray, encoding: str) -> np.ndarray | str:
    if encoding == "base64":  # little-endian float32, as OpenAI's clients decode it
        return base64.b64encode(row.astype("<f4", copy=False).tobytes()).decode("ascii")
    return row  # orjson writes a float32 array as numbers, each as short as float32 needs


def _bad(param: str, message: str, code: str = "invalid_input") -> BadRequest:
    return BadRequest(f"{param}: {message}", code=code, param=param)
