"""One request sent to one neuron (`Exchange`), and its whole answer read when it is not a
stream.

What goes to the neuron: the body (its `model` rewritten to the id the neuron knows), the
client's end-to-end headers (`client_headers`: never `NOT_FORWARDED`), the gateway's token
and the caller's account stamped in headers. What comes back: the status, `PASS_BACK`
headers, and the body, read here (`read_json`) or streamed by `relay.streams`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from cortex.core import fastjson
from cortex.core.errors import ApiError, BadGateway
from cortex.gateway.catalogue import ModelRef
from cortex.gateway.fleet import Node
from cortex.gateway.http1 import HttpError
from cortex.gateway.http1 import Response as UpstreamResponse
from cortex.gateway.relay.sse import Reading
from cortex.gateway.upstream import neuron_error

# Never forwarded to a neuron: hop-by-hop headers (RFC 9110 7.6.1), what the gateway sets
# itself, and the client's credentials (the neuron gets the gateway's token instead).
NOT_FORWARDED = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length", "host", "authorization", "x-api-key",
    "x-helexa-account-id", "x-helexa-key-id", "x-helexa-routed"})
PASS_BACK = ("Content-Type", "Retry-After")  # a neuron's reply headers the client gets


def client_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The caller's end-to-end headers, read off the WSGI environ, names lower-cased
    (werkzeug's header view costs more than the rest of the hop)."""
    out = {}
    names = _HEADER_NAMES
    for k, v in environ.items():
        name = names.get(k)
        if name is None:
            name = _header_name(k)
        if name:
            out[name] = v
    return out


# environ key -> the header's name to forward, "" for a key that is not one: one lookup a
# key instead of a prefix test, a replace, a lower() and a set test (3.5 -> 1.2 us for
# the openai SDK's headers under gunicorn). Bounded: the keys are what clients send.
_HEADER_NAMES: dict[str, str] = {}


def _header_name(key: str) -> str:
    name = ""
    if key.startswith("HTTP_"):
        name = key[5:].replace("_", "-").lower()
        if name in NOT_FORWARDED:
            name = ""
    if len(_HEADER_NAMES) < 1024:
        _HEADER_NAMES[key] = name
    return name


class Exchange:
    """A request one neuron has answered (the status is in); the caller reads the body.

    `status` and `code` start as the neuron's and become what the request ended as (a
    stream that broke: 502); `reading` is what the answer said, for the bill. `end` hands
    the connection back (kept when the body was read to its end) and runs `on_end`, once.
    """

    __slots__ = ("answered", "code", "first_chunk_at", "model", "node", "on_end", "reading",
                 "response", "sent_s", "status", "stopped")

    def __init__(self, node: Node, model: ModelRef, response: UpstreamResponse, sent_s: float,
                 on_end: Callable[[], None]) -> None:
        self.node, self.model, self.response = node, model, response
        self.status = response.status
        self.answered = response.status == 200  # the neuron took the request on
        self.code = ""
        self.sent_s = sent_s  # the gateway's own time before the request went out
        self.first_chunk_at: float | None = None  # when the body began to arrive
        self.reading = Reading()
        self.on_end: Callable[[], None] | None = on_end
        self.stopped = ""  # why a non-streaming request was stopped (relay.stopped)

    def end(self) -> None:
        """The neuron's part is over: its connection goes back to the pool (when the body
        was read whole) or is closed, and `on_end` runs; only the first call acts."""
        on_end, self.on_end = self.on_end, None
        if on_end is None:
            return
        self.response.release()
        on_end()

    def broke(self, status: int, code: str) -> None:
        self.status, self.code = status, code

    def pass_back(self) -> dict[str, str]:
        headers = self.response.headers
        return {name: headers[name.lower()] for name in PASS_BACK if name.lower() in headers}


def read_body(ex: Exchange) -> bytes:
    """The whole (non-streaming) answer; a 502 if it broke off."""
    try:
        data = ex.response.read()  # the body, read now or earlier (`error_code`)
    except HttpError as exc:
        ex.broke(502, "upstream_read_error")
        raise BadGateway(f"the neuron's reply broke off: {exc}",
                         code="upstream_read_error") from None
    finally:
        ex.first_chunk_at = time.monotonic()
    return data


def read_json(ex: Exchange) -> tuple[bytes, dict[str, Any]]:
    """The whole answer, as it came and parsed (noted for the bill). Anything but the
    neuron API's JSON object (an HTML error page, a truncated or foreign body) is a 502 in
    the client's envelope, never relayed as is."""
    data = read_body(ex)
    body = fastjson.parse(data)
    if not isinstance(body, dict):
        ex.broke(502, "upstream_bad_reply")
        raise BadGateway(f"{ex.node.name} answered HTTP {ex.status} with a body that is not "
                         "the neuron API's JSON", code="upstream_bad_reply")
    ex.reading.chunk(body)
    return data, body


def refusal(ex: Exchange, *, keep_param: bool = False) -> ApiError:
    """The neuron's own non-200 answer (context too long, queue full, ...) as the error the
    client gets; `keep_param` keeps the request field the neuron named."""
    data = read_body(ex)
    try:
        body = json.loads(data)
    except ValueError:
        body = {"error": {"message": data[:200].decode(errors="replace")}}
    ex.reading.chunk(body)
    err = neuron_error(ex.status, body, ex.node.name)
    inner = body.get("error") if isinstance(body, dict) else None
    if keep_param and isinstance(inner, dict) and isinstance(inner.get("param"), str):
        err.param = inner["param"]
    retry = ex.response.headers.get("retry-after")
    if retry and retry.isdigit():
        err.retry_after = int(retry)
    return err
