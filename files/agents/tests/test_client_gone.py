"""Work whose client has gone is stopped: a non-streaming client that closes its connection
frees its slot at once, and one that only closes its sending side (a gateway whose own
client left, or whose deadline passed) gets what was generated, to bill it."""

from __future__ import annotations

import json
import socket

import pytest

from cortex.testing.waiting import wait_for

MSG = [{"role": "user", "content": "Hi"}]
# Runs for many seconds unless something stops it (tiny-long loops within a 65k context).
LONG = {"model": "file:tiny-long", "messages": MSG, "max_tokens": 60000}


@pytest.fixture
def long_neuron(neuron_factory):
    n = neuron_factory(n_ctx=65536, parallel=1)
    n.load("file:tiny-long")
    return n


def _send(n, body: dict, account: str = "acme") -> socket.socket:
    data = json.dumps(body).encode()
    conn = socket.create_connection((n.host, n.port))
    conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 f"application/json\r\nX-Helexa-Account-Id: {account}\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return conn


def _account_tokens(n, account: str, kind: str) -> float:
    return n.neuron.metrics.registry.get_sample_value(
        "neuron_account_tokens_total", {"account": account, "kind": kind}) or 0


def _running(n) -> int:
    return n.neuron.registry.models["file:tiny-long"].scheduler.in_flight


def test_a_non_streaming_client_that_hangs_up_frees_its_slot(long_neuron):
    # Before: the neuron generated on to max_tokens for nobody, holding the slot.
    conn = _send(long_neuron, LONG)
    wait_for(lambda: _running(long_neuron) == 1, "the request to run", 20)
    conn.close()
    wait_for(lambda: _running(long_neuron) == 0, "the slot to be freed", 10)
    r = long_neuron.chat("file:tiny-long", max_tokens=3)  # the slot serves the next one
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    # What it generated for nobody is still counted for its account (to reconcile spend).
    assert 0 < _account_tokens(long_neuron, "acme", "completion") < 60000


def test_a_half_closed_client_gets_what_was_generated(long_neuron):
    conn = _send(long_neuron, LONG)
    wait_for(lambda: _running(long_neuron) == 1, "the request to run", 20)
    conn.shutdown(socket.SHUT_WR)  # "stop": the reading side stays open for the reply
    raw = b""
    conn.settimeout(20)
    while chunk := conn.recv(65536):
        raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        length = [int(h.split(b":")[1]) for h in head.split(b"\r\n")
                  if h.lower().startswith(b"content-length:")]
        if length and len(body) >= length[0]:
            break
    conn.close()
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    usage = json.loads(raw.partition(b"\r\n\r\n")[2])["usage"]
    assert 0 < usage["completion_tokens"] < 60000 and usage["prompt_tokens"] > 0
    assert _running(long_neuron) == 0
    assert _account_tokens(long_neuron, "acme", "completion") == usage["completion_tokens"]
    assert _account_tokens(long_neuron, "acme", "prompt") == usage["prompt_tokens"]


def test_a_half_closed_stream_ends_with_its_usage(long_neuron):
    # The gateway's way to stop a stream and still bill it exactly: close the sending side,
    # read on to the end. Before, the neuron wrote on to max_tokens.
    conn = _send(long_neuron, {**LONG, "stream": True})
    conn.settimeout(20)
    raw = conn.recv(65536)
    while b"data: {" not in raw:
        raw += conn.recv(65536)
    conn.shutdown(socket.SHUT_WR)
    while not raw.rstrip().endswith(b"0\r\n\r\n") and (chunk := conn.recv(65536)):
        raw += chunk
    conn.close()
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    usage = json.loads(events[-2])["usage"]
    assert 0 < usage["completion_tokens"] < 60000
    assert _account_tokens(long_neuron, "acme", "completion") == usage["completion_tokens"]
    assert _running(long_neuron) == 0
