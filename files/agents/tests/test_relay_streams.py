"""The relay's streams (gateway/relay/streams.py) over a real socket: what a client that
leaves mid-stream leaves behind."""

from __future__ import annotations

import socket
import threading
import time

from cortex.gateway.catalogue import ModelRef
from cortex.gateway.fleet import Node
from cortex.gateway.relay import streams
from cortex.gateway.relay.send import Exchange
from cortex.gateway.upstream import Upstream

EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"la"}}]}\n\n'
OPENING = b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}],' \
          b'"helexa_prompt_tokens":7}\n\n'


def chunk(data: bytes) -> bytes:
    return b"%X\r\n%s\r\n" % (len(data), data)


def test_a_drain_gives_up_on_a_neuron_that_sends_nothing_more():
    """The client left; the neuron sent a little more, then nothing (a stalled or queued
    request): the drain waits DRAIN_S for its usage, not the read timeout, then bills what
    was relayed."""
    server = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def neuron() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + chunk(OPENING) + chunk(EVENT)
                     + chunk(EVENT) + chunk(EVENT))
        release.wait(60)  # then silence, the connection open
        conn.close()

    threading.Thread(target=neuron, daemon=True).start()
    upstream = Upstream("", connect=5, read=60)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/v1/chat/completions"
    response = upstream.open("POST", url, b"{}", {"Content-Type": "application/json"})
    ended = []
    ex = Exchange(Node("n1", url), ModelRef("m", None), response, 0.0,
                  lambda: ended.append(True))
    relay = streams.relay(ex)
    relayed = next(relay)
    while relayed.count(b'"content":"la"') < 1:
        relayed += next(relay)
    started = time.monotonic()
    relay.close()  # the client went away
    waited = time.monotonic() - started
    release.set()
    assert waited < 30, waited  # the drain's bound, not the 60 s read timeout
    assert ended == [True] and ex.code == "client_closed"
    assert ex.reading.prompt_tokens == 7 and ex.reading.events == 3
    server.close()
