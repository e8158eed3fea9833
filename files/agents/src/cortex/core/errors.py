"""One error type per failure class, mapped to a JSON envelope in one place.

Handlers raise; the app's error handler turns the exception into the response. That
keeps status codes, `Retry-After` and the body shape consistent across every route.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with an HTTP status and the OpenAI error envelope."""

    status = 500
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.param = param
        self.retry_after = retry_after
        self.extra = extra

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        error.update(self.extra)
        return {"error": error}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class BadRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"


class NotFound(ApiError):
    status = 404
    type = "not_found_error"


class TooManyRequests(ApiError):
    status = 429
    type = "rate_limit_error"


class Unavailable(ApiError):
    status = 503
    type = "service_unavailable"


class BadGateway(ApiError):
    """A neuron could not be reached, or its answer broke or was not its API."""

    status = 502
    type = "api_error"


class GatewayTimeout(ApiError):
    """A neuron had the request and gave no answer in time (it may still be running it)."""

    status = 504
    type = "api_error"


class PreflightError(ApiError):
    """A model load refused before any allocation: 422 with `kind` (docs/api.md)."""

    status = 422

    def __init__(self, kind: str, model_id: str, detail: str, **extra: Any) -> None:
        super().__init__(detail, code=kind)
        self.kind = kind
        self.model_id = model_id
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"kind": self.kind, "model_id": self.model_id, "detail": self.detail,
                          **self.extra}}
