"""Calls to a neuron beside the relay, shared by the API families' routes.

A neuron's refusal read into the error the client gets, and a prompt counted by the
model's own template and tokenizer on a replica that has it loaded (`POST /tokenize`).
"""

from __future__ import annotations

import json
from typing import Any

from cortex.core.errors import ApiError, NotFound, Unavailable
from cortex.gateway import proxy
from cortex.gateway.composition import Gateway
from cortex.gateway.router import Target
from cortex.gateway.upstream import UpstreamError, neuron_error


def refusal(ex: proxy.Exchange, *, keep_param: bool = False) -> ApiError:
    """The neuron's own non-200 answer (context too long, queue full, ...) as an error;
    `keep_param` keeps the request field the neuron named."""
    data = proxy.read_body(ex)
    try:
        body = json.loads(data)
    except ValueError:
        body = {"error": {"message": data[:200].decode(errors="replace")}}
    err = neuron_error(ex.response.status, body, ex.target.node.name)
    inner = body.get("error") if isinstance(body, dict) else None
    if keep_param and isinstance(inner, dict) and isinstance(inner.get("param"), str):
        err.param = inner["param"]
    retry = ex.response.headers.get("retry-after")
    if retry and retry.isdigit():
        err.retry_after = int(retry)
    return err


def loaded_target(gw: Gateway, model: str) -> Target:
    """The least busy replica that has `model` loaded: a count never loads a model (nor
    evicts one for it)."""
    entry = gw.catalogue.resolve(model)
    model_id = entry.load_id if entry else model
    replicas = gw.fleet.replicas(model_id)
    if not replicas:
        if entry is None:
            raise NotFound(f"model {model!r} is not in the catalogue and not loaded on "
                           "any node", code="model_not_found", param="model")
        raise Unavailable(f"{entry.id} is not loaded: counting uses a loaded model's "
                          "tokenizer and does not load one; send a request first, or retry "
                          "once it is loaded", code="model_not_loaded", retry_after=5)
    node = min(replicas, key=lambda n: (n.loaded(model_id).busy, n.name))
    return Target(node, model_id, entry.id if entry else model, entry)


def tokenize(gw: Gateway, target: Target, req: dict[str, Any]) -> int:
    """The prompt's size by the neuron's own template and tokenizer."""
    url = f"{target.node.endpoint}/tokenize"
    try:
        status, reply = gw.upstream.post_json(url, dict(req, model=target.model_id), read=60)
    except UpstreamError as exc:
        raise ApiError(f"could not reach {target.node.name} to count tokens: {exc}",
                       code="upstream_connection_error", status=502) from None
    if status != 200:
        raise neuron_error(status, reply, target.node.name)
    return int(reply["tokens"])


def count_on_loaded(gw: Gateway, model: str, req: dict[str, Any]) -> int:
    return tokenize(gw, loaded_target(gw, model), req)
