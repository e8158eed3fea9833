"""Request-body checks that need no web framework: shared by Flask routes and the WSGI
data plane, so both refuse a bad body with the same 4xx."""

from __future__ import annotations

import json
from typing import Any

from cortex.core.errors import ApiError, BadRequest

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def check_json_type(mimetype: str) -> None:
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(f"Content-Type {mimetype!r} is not supported; send application/json",
                       code="unsupported_media_type", status=415,
                       type="invalid_request_error")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from None
    except RecursionError:  # JSON nested thousands deep
        raise BadRequest("the body is nested too deeply", code="malformed_json") from None
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object", code="invalid_request_body",
                       status=422, type="invalid_request_error")
    return body


def too_large(limit: int | None) -> ApiError:
    return ApiError(f"the body is larger than the {limit}-byte limit",
                    code="request_too_large", status=413, type="invalid_request_error")


def parse_bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def sse_event(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()
