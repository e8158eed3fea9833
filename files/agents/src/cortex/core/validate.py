"""Small checks for request bodies: each failure is a 422 naming the field and the fix."""

from __future__ import annotations

import math
from typing import Any

from cortex.core.errors import ApiError

_MISSING = object()


def invalid(param: str, message: str) -> ApiError:
    return ApiError(f"{param}: {message}", code="invalid_request_body", status=422,
                    type="invalid_request_error", param=param)


def get_number(body: dict, key: str, default: Any = None, *, lo: float | None = None,
               hi: float | None = None, integer: bool = False) -> Any:
    value = body.get(key, _MISSING)
    if value is _MISSING or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise invalid(key, f"expected {'an integer' if integer else 'a number'}, "
                           f"got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):  # 1e999 parses as inf
        raise invalid(key, "expected a finite number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise invalid(key, f"must be between {lo} and {hi}, got {value}")
    return value


def get_bool(body: dict, key: str, default: bool = False) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(key, f"expected true or false, got {type(value).__name__}")
    return value


def get_str(body: dict, key: str, default: str | None = None) -> str | None:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise invalid(key, f"expected a string, got {type(value).__name__}")
    return value


# Stop strings are matched on a model's scheduler thread for every token: bounded, so one
# request cannot slow every sequence batched with it (OpenAI takes 4 stops).
MAX_STOPS = 16
MAX_STOP_CHARS = 500


def get_stop(body: dict, key: str = "stop") -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > MAX_STOPS:
            raise invalid(key, f"at most {MAX_STOPS} stop sequences of at most "
                          f"{MAX_STOP_CHARS} characters each (got {len(value)} sequences)")
        for i, s in enumerate(value):
            if len(s) > MAX_STOP_CHARS:
                raise invalid(key, f"at most {MAX_STOPS} stop sequences of at most "
                              f"{MAX_STOP_CHARS} characters each ({key}[{i}] has {len(s)})")
        return [s for s in value if s]
    raise invalid(key, "expected a string or a list of strings")
