"""What the data plane sends back: a status, headers and a body, with no web framework."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from cortex.core import fastjson

log = logging.getLogger(__name__)

REASONS = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


@dataclass
class Reply:
    """A status, headers, and the body (bytes, or the SSE bytes of a stream as they come)."""

    status: int
    headers: dict[str, str]
    body: bytes | Iterable[bytes]


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    data = fastjson.dumps(body)
    return Reply(status, {"Content-Type": "application/json",
                          "Content-Length": str(len(data)), **(headers or {})}, data)


class Closing:
    """A WSGI body that runs `after` once, when the server closes it: after the body is
    sent and its own `close` has run. What runs there (accounting, releasing a hold) is off
    the client's clock and must not break the worker: a failure is only logged."""

    def __init__(self, body: Iterable[bytes], after: Callable[[], None]) -> None:
        self.body, self.after = body, after

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        after, self.after = self.after, None
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            if after is not None:
                try:
                    after()
                except Exception:
                    log.exception("bookkeeping after a finished reply failed")

    def __del__(self) -> None:
        # PEP 3333 has the server call close() however the request ended; werkzeug's
        # server skips it when the client resets the connection while the server drains
        # the request body after the reply. The request is still settled, once, when the
        # server lets go of its body.
        if self.after is not None:
            self.close()
