"""The watch on a non-streaming request's client: a hang-up or the deadline stops it."""

from __future__ import annotations

import socket
import threading

from cortex.gateway.hangup import Watch, hung_up


def _stopped() -> tuple[list[str], threading.Event, object]:
    seen: list[str] = []
    fired = threading.Event()

    def stop(reason: str) -> None:
        seen.append(reason)
        fired.set()

    return seen, fired, stop


def test_a_client_that_hangs_up_is_seen():
    ours, theirs = socket.socketpair()
    seen, fired, stop = _stopped()
    watch = Watch(ours, 30, stop)
    assert not hung_up(ours)
    theirs.sendall(b"x")  # bytes (a pipelined request) are not a hang-up
    assert not fired.wait(1.0)
    ours.recv(1)
    theirs.close()
    assert fired.wait(5) and seen == ["client_closed"] and watch.reason == "client_closed"
    ours.close()


def test_the_deadline_stops_it_and_a_closed_watch_never_fires():
    ours, theirs = socket.socketpair()
    seen, fired, stop = _stopped()
    Watch(ours, 0.3, stop)
    assert fired.wait(5) and seen == ["deadline"]
    seen2, fired2, stop2 = _stopped()
    watch = Watch(ours, 0.3, stop2)
    watch.close()  # the reply came first
    assert not fired2.wait(1.0) and seen2 == []
    ours.close()
    theirs.close()
