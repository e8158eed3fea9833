"""`POST /v1/responses`: the Responses API, stateless, relayed as a chat completion.

The web layer only: the translation (`translate`, `reply`, `stream`) is pure functions of data.
Auth is a Bearer token (what the OpenAI SDK and Codex send). Every error on these routes
leaves in OpenAI's envelope, and once a stream has begun, as `response.failed`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from cortex.core.errors import ApiError, NotFound
from cortex.core.http import SSE_HEADERS, json_body, json_response, too_large
from cortex.gateway import proxy
from cortex.gateway.responses import errors, reply, translate
from cortex.gateway.responses.stream import Converter
from cortex.gateway.upstream import UpstreamError, neuron_error

log = logging.getLogger(__name__)
bp = Blueprint("responses", __name__)
CHAT = "/v1/chat/completions"


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return json_response(errors.envelope(exc), errors.status_of(exc), exc.headers())


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(exc: RequestEntityTooLarge) -> Response:
    return _api_error(too_large(current_app.config.get("MAX_CONTENT_LENGTH")))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return _api_error(ApiError(f"{exc.name}: {request.method} {request.path}",
                               code="http_error", status=exc.code or 500,
                               type="invalid_request_error"))


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _api_error(ApiError(f"internal error: {type(exc).__name__}", code="internal_error"))


@bp.post("/v1/responses")
def create() -> Any:
    started = time.monotonic()
    gw = current_app.extensions["gateway"]
    principal = gw.auth.authenticate()
    gw.auth.check_caps(principal)
    plan = translate.to_chat(json_body())
    ex = proxy.open_exchange(gw, CHAT, plan.chat, principal,
                             proxy.client_headers(request.environ), started=started)
    node = {"X-Cortex-Node": ex.target.node.name}
    if ex.response.status != 200:
        raise refusal(ex)
    if plan.stream:
        events = Converter(plan).events(proxy.iter_chunks(ex))
        return Response(events, mimetype="text/event-stream", headers=SSE_HEADERS | node)
    completion = json.loads(proxy.read_body(ex))
    return json_response(reply.to_response(completion, plan), headers=node)


@bp.post("/v1/responses/input_tokens")
def input_tokens() -> Any:
    """The prompt's size by the neuron's own template and tokenizer (`POST /tokenize`)."""
    gw = current_app.extensions["gateway"]
    gw.auth.authenticate()
    chat = translate.to_chat(json_body()).chat
    target = gw.router.route(chat["model"])  # the model's own tokenizer lives on its node
    url = f"{target.node.endpoint}/tokenize"
    try:
        status, counted = gw.upstream.post_json(url, dict(chat, model=target.model_id),
                                                read=60)
    except UpstreamError as exc:
        raise ApiError(f"could not reach {target.node.name} to count tokens: {exc}",
                       code="upstream_connection_error", status=502) from None
    if status != 200:
        raise neuron_error(status, counted, target.node.name)
    return json_response({"object": "response.input_tokens",
                          "input_tokens": counted["tokens"]})


@bp.route("/v1/responses/<response_id>", methods=["GET", "DELETE"])
@bp.post("/v1/responses/<response_id>/cancel")
@bp.get("/v1/responses/<response_id>/input_items")
def stored(response_id: str) -> Any:
    raise NotFound(f"no response {response_id!r}: this gateway is stateless and keeps no "
                   "responses; read the response from the reply that created it",
                   code="response_not_found", param="response_id")


def refusal(ex: proxy.Exchange) -> ApiError:
    """The neuron's own non-200 answer (context too long, queue full, ...) as an error."""
    data = proxy.read_body(ex)
    try:
        body = json.loads(data)
    except ValueError:
        body = {"error": {"message": data[:200].decode(errors="replace")}}
    err = neuron_error(ex.response.status, body, ex.target.node.name)
    inner = body.get("error") if isinstance(body, dict) else None
    if isinstance(inner, dict) and isinstance(inner.get("param"), str):
        err.param = inner["param"]  # the chat field the neuron named
    retry = ex.response.headers.get("retry-after")
    if retry and retry.isdigit():
        err.retry_after = int(retry)
    return err
