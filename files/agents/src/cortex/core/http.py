"""Flask helpers shared by the neuron and the gateway: JSON bodies, errors, SSE."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from cortex.core.errors import ApiError, Unauthorized
from cortex.core.wire import (  # noqa: F401  (re-exported for the Flask routes)
    SSE_HEADERS,
    check_json_type,
    parse_bearer,
    parse_json_object,
    sse_event,
    too_large,
)

log = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status,
                    mimetype="application/json", headers=headers)


def error_response(exc: ApiError) -> Response:
    return json_response(exc.body(), exc.status, exc.headers())


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a clear 4xx naming the problem and the fix."""
    check_json_type(request.mimetype)
    # get_data raises RequestEntityTooLarge past the limit
    return parse_json_object(request.get_data(cache=True))


def install_error_handlers(app: Flask, *, on_error=error_response) -> None:
    """Every failure leaves as the JSON envelope; nothing falls through as an HTML page."""

    @app.errorhandler(ApiError)
    def _api(exc: ApiError) -> Response:
        return on_error(exc)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        return on_error(too_large(app.config.get("MAX_CONTENT_LENGTH")))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.code or 500, "http_error")
        return on_error(ApiError(f"{exc.name}: {request.method} {request.path}", code=code,
                                 status=exc.code or 500, type="invalid_request_error"))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return on_error(ApiError(f"internal error: {type(exc).__name__}", code="internal_error"))


def bearer_token() -> str:
    return parse_bearer(request.headers.get("Authorization", ""))


def require_token(expected: str) -> None:
    if not expected:
        return
    if not hmac.compare_digest(bearer_token().encode(), expected.encode()):
        raise Unauthorized("missing or wrong bearer token for this neuron "
                           "(the gateway's neuron token)", code="invalid_api_key")


def sse_response(events: Iterable[bytes]) -> Response:
    return Response(events, mimetype="text/event-stream", headers=SSE_HEADERS)
