"""`POST /v1/messages` and `/v1/messages/count_tokens` on the data plane, in Anthropic's shape.

Auth is `x-api-key` (what Anthropic's SDKs send) or a Bearer token; `anthropic-version`
and `anthropic-beta` are accepted and need nothing from us. Every error on these routes,
the prologue's included (a wrong method, a bad key, a spent cap), leaves in Anthropic's
envelope, not OpenAI's.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from cortex.core.errors import ApiError, NotFound, Unavailable
from cortex.core.wire import SSE_HEADERS
from cortex.gateway import proxy
from cortex.gateway.anthropic import errors, translate
from cortex.gateway.anthropic.stream import Converter
from cortex.gateway.composition import Gateway
from cortex.gateway.dataplane import Call, Dialect, Route
from cortex.gateway.reply import Reply, json_reply
from cortex.gateway.router import Target
from cortex.gateway.upstream import UpstreamError, neuron_error

log = logging.getLogger(__name__)


def _render(exc: ApiError) -> tuple[int, dict[str, Any]]:
    return errors.status_of(exc), errors.envelope(exc)


ANTHROPIC = Dialect("anthropic", _render, x_api_key=True)


def messages(call: Call) -> Reply:
    gw, body = call.gw, call.body
    req = translate.to_openai(body)
    model, thinking = body["model"], req["enable_thinking"]
    ex = proxy.open_exchange(gw, "/v1/chat/completions", req, call.principal, call.headers,
                             started=call.started, hold=call.hold)
    node = {"X-Cortex-Node": ex.target.node.name}
    if ex.response.status != 200:
        raise _refusal(ex)
    if req.get("stream"):
        conv = Converter(model, thinking=thinking,
                         count=lambda: _count_or_zero(gw, ex.target, req))
        return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS, **node},
                     conv.events(proxy.iter_chunks(ex)))
    reply = json.loads(proxy.read_body(ex))
    return json_reply(200, translate.to_anthropic(reply, model, thinking=thinking), node)


def count_tokens(call: Call) -> Reply:
    """The prompt's size by the model's own tokenizer, on a node that has it loaded: a
    count never loads a model (nor evicts one for it)."""
    gw = call.gw
    req = translate.to_openai(call.body, count_only=True)
    entry = gw.catalogue.resolve(call.model)
    model_id = entry.load_id if entry else call.model
    replicas = gw.fleet.replicas(model_id)
    if not replicas:
        if entry is None:
            raise NotFound(f"model {call.model!r} is not in the catalogue and not loaded on "
                           "any node", code="model_not_found", param="model")
        raise Unavailable(f"{entry.id} is not loaded: count_tokens counts with a loaded "
                          "model's tokenizer and does not load one; send a message first, "
                          "or retry once it is loaded", code="model_not_loaded", retry_after=5)
    node = min(replicas, key=lambda n: (n.loaded(model_id).busy, n.name))
    target = Target(node, model_id, entry.id if entry else call.model, entry)
    return json_reply(200, {"input_tokens": tokenize(gw, target, req)})


def tokenize(gw: Gateway, target: Target, req: dict[str, Any]) -> int:
    """The prompt's size by the neuron's own template and tokenizer (`POST /tokenize`)."""
    url = f"{target.node.endpoint}/tokenize"
    try:
        status, reply = gw.upstream.post_json(url, dict(req, model=target.model_id), read=60)
    except UpstreamError as exc:
        raise ApiError(f"could not reach {target.node.name} to count tokens: {exc}",
                       code="upstream_connection_error", status=502) from None
    if status != 200:
        raise neuron_error(status, reply, target.node.name)
    return int(reply["tokens"])


def _count_or_zero(gw: Gateway, target: Target, req: dict[str, Any]) -> int:
    try:
        return tokenize(gw, target, req)
    except (ApiError, KeyError, ValueError) as exc:
        log.warning("could not count the prompt for message_start: %s", exc)
        return 0


def _refusal(ex: proxy.Exchange) -> ApiError:
    """The neuron's own non-200 answer (context too long, queue full, ...) as an error."""
    data = proxy.read_body(ex)
    try:
        body = json.loads(data)
    except ValueError:
        body = {"error": {"message": data[:200].decode(errors="replace")}}
    err = neuron_error(ex.response.status, body, ex.target.node.name)
    retry = ex.response.headers.get("retry-after")
    if retry and retry.isdigit():
        err.retry_after = int(retry)
    return err


ROUTES = [
    Route("/v1/messages", ANTHROPIC, messages),
    Route("/v1/messages/count_tokens", ANTHROPIC, count_tokens, reserve=lambda body: 0),
]
