"""A non-streaming request stopped before its reply came: its client hung up, or the read
timeout passed.

While the gateway waits for a neuron's whole reply it writes nothing, so only a watch
(`hangup.Watch`) sees the client go; it then stops the request (`http1.Stop`: the neuron
connection's sending half closed), which the neuron reads as its client gone: it cancels
the work, frees the slot and replies with what it generated and its usage. That usage is
billed; a neuron that does not reply within `WAIT_S` is cut off, and the request billed
its reservation (the caller's `Tab.lost`): what it made is unknown, never free.
"""

from __future__ import annotations

import socket
from typing import Any

from cortex.core.errors import ApiError, GatewayTimeout
from cortex.gateway.hangup import Watch
from cortex.gateway.http1 import Stop
from cortex.gateway.relay.send import Exchange, read_json

WAIT_S = 2.0  # how long a stopped neuron has to reply with what it made (it looks each 0.25 s)


class Stopping:
    """The watch over one non-streaming attempt: `reason()` ends it once the reply's head
    came or the request failed, and says why it was stopped ("" if it was not)."""

    __slots__ = ("stop", "watch")

    def __init__(self, client: socket.socket | None, deadline_s: float) -> None:
        self.stop = Stop(WAIT_S)
        self.watch = Watch(client, deadline_s, self.stop)

    def reason(self) -> str:
        self.watch.close()
        return self.stop.end()


def error(reason: str, node: str, deadline_s: float) -> ApiError:
    """What the client is told (a client that hung up is told nothing it will read)."""
    if reason == "deadline":
        return GatewayTimeout(f"{node} gave no reply within {deadline_s:g} s: the request "
                              "was stopped, and what it generated is billed",
                              code="upstream_timeout")
    return ApiError("the client closed the connection", code="client_closed", status=499,
                    type="invalid_request_error")


def settle_reply(ex: Exchange, reason: str, deadline_s: float) -> tuple[ApiError, bool]:
    """A stopped request's reply, read for its usage (a neuron that had started replies 200
    with what it generated): the error for the client, and whether what was generated is
    unknown (a 200 without a usage: bill the reservation)."""
    ex.response.stop(WAIT_S)  # its sending half is closed: read the rest, never pooled
    usage: Any = None
    try:
        _, body = read_json(ex)
        usage = body.get("usage")
    except ApiError:
        pass
    err = error(reason, ex.node.name, deadline_s)
    unknown = ex.status == 200 and not isinstance(usage, dict)
    ex.broke(err.status, err.code)
    return err, unknown
