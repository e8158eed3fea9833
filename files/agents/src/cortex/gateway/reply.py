"""What the data plane sends back: a status, headers and a body, with no web framework."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

log = logging.getLogger(__name__)

REASONS = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


@dataclass
class Reply:
    """A status, headers, and the body (bytes, or the SSE bytes of a stream as they come)."""

    status: int
    headers: dict[str, str]
    body: bytes | Iterable[bytes]


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    data = json.dumps(body, separators=(",", ":")).encode()
    return Reply(status, {"Content-Type": "application/json",
                          "Content-Length": str(len(data)), **(headers or {})}, data)


class ThenRun:
    """A one-piece WSGI body that runs `after` when the server closes it, once sent."""

    def __init__(self, data: bytes, after: Callable[[], None]) -> None:
        self.data, self.after = data, after

    def __iter__(self) -> Iterator[bytes]:
        return iter((self.data,))

    def close(self) -> None:
        after, self.after = self.after, None
        if after is not None:
            try:
                after()
            except Exception:  # the reply is out; bookkeeping must not break the worker
                log.exception("accounting for a finished request failed")
