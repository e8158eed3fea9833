"""A misbehaving network between a gateway and a neuron, for the fault tests and the soak.

`FaultProxy` sits on loopback between a gateway and a neuron and, on command, delays,
stalls, cuts or replaces the neuron's replies to inference requests while the gateway's
`/health` and `/models` polls pass untouched. The services themselves are real processes
(cortex.testing.processes).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass


# -- the fault proxy -----------------------------------------------------------------------
@dataclass
class Delay:
    """Hold the request this long before passing it on (a neuron slow to answer)."""

    seconds: float


@dataclass
class Stall:
    """Pass the reply up to a point (`after_bytes` of its body, or its first `after_events`
    whole events), then send nothing more for `seconds`."""

    seconds: float
    after_bytes: int = 0
    after_events: int = 0


@dataclass
class Cut:
    """Pass the reply up to a point (as Stall), then close the connection (a crash)."""

    after_bytes: int = 0
    after_events: int = 0


@dataclass
class Raw:
    """Answer with these raw bytes and close, without asking the neuron."""

    raw: bytes


def http_reply(status: int, body: bytes, content_type: str = "application/json",
               length: int | None = None) -> Raw:
    """An HTTP/1.1 reply; `length` may claim more bytes than `body` has (a truncated reply)."""
    head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            "Connection: close\r\n\r\n")
    return Raw(head.encode() + body)


def inference_request(method: str, path: str) -> bool:
    """What the proxy's faults apply to by default: inference, not the gateway's polls."""
    return method == "POST" and path.startswith("/v1/")


Fault = Delay | Stall | Cut | Raw


class FaultProxy:
    """A loopback TCP proxy in front of one neuron that misbehaves on command.

    Each request gets its own upstream connection and goes out with `Connection: close`,
    so the proxy never has to frame a reply: it relays bytes until the neuron closes.
    Faults apply to requests `match` selects (inference by default); `requests` counts
    those, `hits` the ones a fault met, and `holding` how many are held right now (to wait
    on, not sleep).
    """

    def __init__(self, upstream: str,
                 match: Callable[[str, str], bool] = inference_request) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.match = match
        self.fault: Fault | None = None
        self.requests = 0  # requests `match` selected, faulted or not
        self.hits = 0  # of which a fault met
        self.holding = 0
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    def set(self, fault: Fault | None) -> None:
        self._released.clear()
        self.fault = fault

    def release(self) -> None:
        """Clear the fault and let every held request go on at once."""
        self.fault = None
        self._released.set()

    def close(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self._sock.close()

    # -- plumbing ----------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            request = _read_request(client)
            if request is None:
                return
            method, path, data = request
            matched = self.match(method, path)
            fault = self.fault if matched else None
            with self._lock:
                self.requests += matched
                self.hits += fault is not None
            if isinstance(fault, Raw):
                client.sendall(fault.raw)
                return
            if isinstance(fault, Delay):
                self._hold(fault.seconds)
            upstream = socket.create_connection(self.upstream, timeout=600)
            upstream.sendall(data)
            self._relay(upstream, client, fault)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def _hold(self, seconds: float) -> None:
        with self._lock:
            self.holding += 1
        try:
            self._released.wait(seconds)
        finally:
            with self._lock:
                self.holding -= 1

    def _relay(self, upstream: socket.socket, client: socket.socket, fault: Fault | None
               ) -> None:
        cut = fault if isinstance(fault, Stall | Cut) else None
        head: bytes | None = b""  # the reply's head, until its end is seen
        body = b""  # the body so far, until the point to stop at is in it
        sent = 0
        while data := upstream.recv(65536):
            if cut is None:
                client.sendall(data)
                continue
            if head is not None:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                client.sendall(head[:end + 4])
                data, head = head[end + 4:], None
            body += data
            at = _stop_at(body, cut)
            upto = len(body) if at is None else at
            if upto > sent:
                client.sendall(body[sent:upto])
                sent = upto
            if at is not None:
                if isinstance(cut, Stall):
                    self._hold(cut.seconds)
                return


# The end of one SSE event and of the HTTP chunk that carries it (the neuron writes one
# event a chunk): stopping there leaves no event, and no chunk, half sent.
EVENT_END = b"\n\n\r\n"


def _stop_at(body: bytes, cut: Stall | Cut) -> int | None:
    if cut.after_events:
        pos = 0
        for _ in range(cut.after_events):
            i = body.find(EVENT_END, pos)
            if i < 0:
                return None
            pos = i + len(EVENT_END)
        return pos
    return cut.after_bytes if len(body) >= cut.after_bytes else None


def _read_request(sock: socket.socket) -> tuple[str, str, bytes] | None:
    """One request off `sock`, re-encoded with `Connection: close`."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    kept, length = [lines[0]], 0
    for line in lines[1:]:
        name = line.partition(":")[0].strip().lower()
        if name == "content-length":
            length = int(line.partition(":")[2])
        if name not in ("connection", "keep-alive"):
            kept.append(line)
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            return None
        body += data
    kept.append("Connection: close")
    return method, path, ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1") + body
