"""Stopping work nobody waits for: a watch on a non-streaming request's client connection
and on its deadline.

While the gateway waits for a neuron's whole reply it writes nothing to its client, so
nothing tells it the client has gone; and the neuron, which writes nothing either until
it is done, cannot tell. `Watch` waits (in a thread: a greenlet under gevent) until the
client's socket reads end of file or the deadline passes, and then calls `stop`: the
relay closes its sending side of the neuron connection (`http1.Response.stop`), which the
neuron reads as its client gone: it cancels the job, frees the slot and still sends what
was generated, with its usage, which is what gets billed.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable

from cortex.core.peer import client_socket, hung_up

# The peek is core.peer's, shared with the neuron; the relay reads it here.
__all__ = ["Watch", "client_socket", "hung_up"]

TICK_S = 0.5  # how often the watch looks again (a hang-up is seen within this)


class Watch:
    """Calls `stop(reason)` once: "client_closed" when the client hangs up, "deadline"
    when `deadline_s` pass first. `close()` ends the watch (the reply came)."""

    def __init__(self, sock: socket.socket | None, deadline_s: float,
                 stop: Callable[[str], None]) -> None:
        self.sock, self.stop = sock, stop
        self.deadline = time.monotonic() + deadline_s
        self.reason = ""
        self._done = threading.Event()
        threading.Thread(target=self._run, name="hangup-watch", daemon=True).start()

    def close(self) -> None:
        self._done.set()

    def _run(self) -> None:
        while not self._done.is_set():
            left = self.deadline - time.monotonic()
            if left <= 0:
                self._fire("deadline")
                return
            if self.sock is None:
                self._done.wait(min(left, TICK_S))
                continue
            try:
                readable, _, _ = select.select([self.sock], [], [], min(left, TICK_S))
            except (OSError, ValueError):
                readable = [self.sock]  # closed under us: gone
            if readable and not self._done.is_set() and hung_up(self.sock):
                self._fire("client_closed")
                return
            if readable:  # bytes, not EOF (a pipelined request): look again in a while
                self._done.wait(TICK_S)

    def _fire(self, reason: str) -> None:
        if not self._done.is_set():
            self.reason = reason
            self._done.set()
            self.stop(reason)
