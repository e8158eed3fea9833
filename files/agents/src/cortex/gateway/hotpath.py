"""The proxy's two hot routes as a plain WSGI layer in front of the Flask app.

Flask's contexts, URL map and request/response objects cost ~130 us a request here, about
as much as the gateway's own work on a relay, and add nothing to it. POSTs to
/v1/chat/completions and /v1/completions are served by this layer with the same checks,
auth, caps, errors and metrics; every other request goes through Flask unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from cortex.core.errors import ApiError
from cortex.core.http import check_json_type, parse_bearer, parse_json_object, too_large
from cortex.gateway import proxy

if TYPE_CHECKING:
    from cortex.gateway.app import Gateway

log = logging.getLogger(__name__)

HOT = frozenset({"/v1/chat/completions", "/v1/completions"})
_REASONS = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


def handle(gw: Gateway, path: str, environ: dict[str, Any], started: float) -> proxy.Reply:
    """Authenticate, check caps, read the JSON body and relay it: one OpenAI request."""
    principal = gw.auth.principal(parse_bearer(environ.get("HTTP_AUTHORIZATION", "")))
    gw.auth.check_caps(principal)
    body = read_json(environ, gw.cfg.gateway.max_body_bytes)
    return proxy.forward(gw, path, body, principal, proxy.client_headers(environ),
                         started=started)


def read_json(environ: dict[str, Any], limit: int) -> dict[str, Any]:
    """The JSON object in the request body, or the same 4xx the Flask routes give."""
    check_json_type(environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower())
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = int(length)
        except ValueError:
            raise ApiError(f"Content-Length {length!r} is not a number", code="bad_request",
                           status=400, type="invalid_request_error") from None
        if size > limit:
            raise too_large(limit)
        raw = stream.read(size)
    else:  # chunked upload: read one byte past the limit to know it was crossed
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise too_large(limit)
    return parse_json_object(raw)


class HotPath:
    """WSGI middleware: the hot routes here (any method), the rest to `app` (Flask's)."""

    def __init__(self, gw: Gateway, app: Callable[..., Iterable[bytes]]) -> None:
        self.gw, self.app = gw, app

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in HOT:
            return self.app(environ, start_response)
        started = time.monotonic()
        method = environ.get("REQUEST_METHOD", "")
        try:
            if method != "POST":
                raise ApiError(f"Method Not Allowed: {method} {path}; use POST",
                               code="method_not_allowed", status=405,
                               type="invalid_request_error")
            reply = handle(self.gw, path, environ, started)
        except ApiError as exc:
            reply = error_reply(exc)
        except Exception as exc:  # the client still gets the JSON envelope
            log.exception("unhandled error on POST %s", path)
            reply = error_reply(ApiError(f"internal error: {type(exc).__name__}",
                                         code="internal_error"))
        start_response(_REASONS.get(reply.status, str(reply.status)),
                       list(reply.headers.items()))
        return [reply.body] if isinstance(reply.body, bytes) else reply.body


def error_reply(exc: ApiError) -> proxy.Reply:
    data = json.dumps(exc.body(), separators=(",", ":")).encode()
    return proxy.Reply(exc.status, {"Content-Type": "application/json",
                                     "Content-Length": str(len(data)), **exc.headers()}, data)
