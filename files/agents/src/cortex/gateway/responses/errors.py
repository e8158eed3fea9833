"""Errors on the Responses route: OpenAI's envelope before a stream, `response.failed` in one.

Before any byte is sent an error is a status and `{"error": {message, type, param, code}}`,
as OpenAI's API answers it (a body it cannot use is a 400, never a 415 or 422). Once a
stream has begun, the error is the `error` of a failed response: `{code, message}`, with
the codes clients act on (Codex retries `rate_limit_exceeded` and `server_error`, and
compacts on `context_length_exceeded`).
"""

from __future__ import annotations

from typing import Any

from cortex.core.errors import ApiError

STATUS = {415: 400, 422: 400}
# What a failure mid-stream is called, by the HTTP status it would have had.
RETRYABLE = {429: "rate_limit_exceeded", 503: "rate_limit_exceeded"}
KEPT_CODES = {"context_length_exceeded", "rate_limit_exceeded", "invalid_prompt",
              "server_error"}


def status_of(exc: ApiError) -> int:
    return STATUS.get(exc.status, exc.status)


def envelope(exc: ApiError) -> dict[str, Any]:
    body = exc.body()
    error = body.get("error")
    if not isinstance(error, dict) or "message" not in error:  # a neuron's preflight shape
        error = {"message": exc.message, "type": exc.type, "code": exc.code,
                 "param": exc.param}
    if status_of(exc) < 500 and error.get("type") in (None, "upstream_error", "server_error"):
        error = dict(error, type="invalid_request_error")
    return {"error": error}


def failure(exc: ApiError) -> dict[str, Any]:
    """The `error` of a `response.failed` for what broke the stream."""
    code = exc.code if exc.code in KEPT_CODES else RETRYABLE.get(exc.status, "server_error")
    return {"code": code, "message": exc.message}
