"""Waiting on a condition in tests, never sleeping for synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 15.0,
             interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy (returned); fail after `timeout`
    seconds with `what` in the message."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
    return value
