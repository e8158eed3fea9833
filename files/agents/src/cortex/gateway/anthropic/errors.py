"""Anthropic's error envelope: `{"type": "error", "error": {"type", "message"}}`.

The type follows from the HTTP status, as Anthropic's own API assigns it; clients (the
SDKs, Claude Code) branch on it, e.g. to retry `overloaded_error` and `rate_limit_error`.
"""

from __future__ import annotations

from typing import Any

from cortex.core.errors import ApiError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
         500: "api_error", 502: "api_error", 503: "overloaded_error", 504: "api_error",
         529: "overloaded_error"}

# Anthropic never answers 415 or 422: a body it cannot use is a 400.
STATUS = {415: 400, 422: 400}


def status_of(exc: ApiError) -> int:
    return STATUS.get(exc.status, exc.status)


def error_type(status: int) -> str:
    if status in TYPES:
        return TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def envelope(exc: ApiError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status_of(exc)),
                                       "message": exc.message}}
