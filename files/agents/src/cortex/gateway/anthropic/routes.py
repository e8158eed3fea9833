"""`POST /v1/messages` and `/v1/messages/count_tokens`, in Anthropic's shape and errors.

Auth is `x-api-key` (what Anthropic's SDKs send) or a Bearer token; `anthropic-version`
and `anthropic-beta` are accepted and need nothing from us. Every error on these routes
leaves in Anthropic's envelope, not OpenAI's.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from cortex.core.errors import ApiError
from cortex.core.http import SSE_HEADERS, json_body, json_response
from cortex.gateway import proxy
from cortex.gateway.anthropic import errors, translate
from cortex.gateway.anthropic.stream import Converter
from cortex.gateway.router import Target
from cortex.gateway.upstream import UpstreamError, neuron_error

log = logging.getLogger(__name__)
bp = Blueprint("anthropic", __name__)


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return json_response(errors.envelope(exc), errors.status_of(exc), exc.headers())


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc: RequestEntityTooLarge) -> Response:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return _api_error(ApiError(f"the body is larger than the {limit}-byte limit",
                               code="request_too_large", status=413))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _api_error(ApiError(f"{exc.name}: {request.method} {request.path}",
                               code="http_error", status=exc.code or 500))


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _api_error(ApiError(f"internal error: {type(exc).__name__}", code="internal_error"))


@bp.post("/v1/messages")
def messages() -> Any:
    started = time.monotonic()
    gw = current_app.extensions["gateway"]
    principal = gw.auth.authenticate(allow_x_api_key=True)
    gw.auth.check_caps(principal)
    body = json_body()
    req = translate.to_openai(body)
    model, thinking = body["model"], req["enable_thinking"]
    ex = proxy.open_exchange(gw, "/v1/chat/completions", req, principal,
                             proxy.client_headers(request.environ), started=started)
    node = {"X-Cortex-Node": ex.target.node.name}
    if ex.response.status != 200:
        raise _refusal(ex)
    if req.get("stream"):
        conv = Converter(model, thinking=thinking,
                         count=lambda: _count_or_zero(gw, ex.target, req))
        return Response(conv.events(proxy.iter_chunks(ex)), mimetype="text/event-stream",
                        headers=SSE_HEADERS | node)
    reply = json.loads(proxy.read_body(ex))
    return json_response(translate.to_anthropic(reply, model, thinking=thinking), headers=node)


@bp.post("/v1/messages/count_tokens")
def count_tokens() -> Any:
    gw = current_app.extensions["gateway"]
    gw.auth.authenticate(allow_x_api_key=True)
    req = translate.to_openai(json_body(), count_only=True)
    target = gw.router.route(req["model"])  # the model's own tokenizer lives on its node
    return json_response({"input_tokens": tokenize(gw, target, req)})


def tokenize(gw: Any, target: Target, req: dict[str, Any]) -> int:
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


def _count_or_zero(gw: Any, target: Target, req: dict[str, Any]) -> int:
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
