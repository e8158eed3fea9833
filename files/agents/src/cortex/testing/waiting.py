"""Waiting on a condition in tests, never sleeping for synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], what: str = "condition", timeout: float = 15.0,
             interval: float = 0.02, *, ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll `condition` until it returns something truthy (returned); fail after `timeout`
    seconds with `what` and the last value in the message.

    `ignore`: exceptions that count as "not yet" (a server still starting up); any other
    exception ends the wait at once, as does an assertion inside `condition`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except ignore as exc:
            value = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} "
                                 f"(last: {value!r})")
        time.sleep(interval)
