"""The gateway's gunicorn worker: gevent, with a reply's head and body in one write.

gunicorn writes the status line and headers in one send and the body in another: for a
small JSON reply that is two syscalls, two TCP segments and two wake-ups of the client,
~0.1 ms of the gateway's added latency here. This worker holds the head back and sends it
with the first body bytes (`_emit_body` is gunicorn's hook for framing the body).

Three things gunicorn works out afresh for every request are kept or put off instead, in
this process only: the Date header's text (1.9 us to format; it changes once a second),
whether the peer may set forwarding headers (3.4 us: an `ipaddress` parse and network
tests; its answer for an address is fixed while the worker runs, as is the config it
reads), and `wsgi.errors`' streams (2 us: a logger lookup, under gevent a Python-level
lock), found when it is written to.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gunicorn import util
from gunicorn.http import message, wsgi
from gunicorn.workers.ggevent import GeventWorker

from cortex.gateway.http1 import send_all


class OneWriteResponse(wsgi.Response):
    _held = b""

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._held = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _emit_body(self, data: bytes) -> None:
        head, self._held = self._held, b""
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        send_all(self.sock, head + data)

    def can_sendfile(self) -> bool:
        return False  # sendfile would put the body on the wire ahead of the held head

    def close(self) -> None:
        self.send_headers()
        if self._held:  # no body at all (HEAD, 204, an empty reply): the head alone
            head, self._held = self._held, b""
            send_all(self.sock, head)
        super().close()


class DateText:
    """gunicorn's `util.http_date`, formatted once a second."""

    def __init__(self, fmt: Callable[..., str]) -> None:
        self.fmt, self.second, self.text = fmt, -1, ""

    def __call__(self, timestamp: float | None = None) -> str:
        if timestamp is not None:
            return self.fmt(timestamp)
        now = int(time.time())
        if now != self.second:
            self.text, self.second = self.fmt(now), now
        return self.text


def remembered_trust(decide: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """gunicorn's per-request check that the peer is a trusted proxy, kept per address."""
    seen: dict[str, bool] = {}

    def trusted(request: Any) -> bool:
        peer = request.peer_addr
        if not isinstance(peer, tuple):  # a UNIX socket: gunicorn trusts it
            return decide(request)
        known = seen.get(peer[0])
        if known is None:
            known = decide(request)
            if len(seen) < 4096:
                seen[peer[0]] = known
        return known

    return trusted


class LazyErrors(wsgi.WSGIErrorsWrapper):
    """gunicorn's `wsgi.errors`, whose streams are looked up at its first write (almost no
    request writes to it), not when each request's environ is built."""

    def __init__(self, cfg: Any) -> None:  # (RawIOBase has no __init__ of its own to call)
        self._cfg = cfg
        self._streams: list | None = None

    @property
    def streams(self) -> list:
        if self._streams is None:
            wsgi.WSGIErrorsWrapper.__init__(self, self._cfg)  # sets self.streams
        return self._streams

    @streams.setter
    def streams(self, value: list) -> None:
        self._streams = value


class GatewayWorker(GeventWorker):
    def handle_exit(self, sig, frame) -> None:
        # A graceful stop (SIGTERM: a restart, or a reload's old workers) waits for open
        # requests; a dashboard's event stream never ends by itself, so end it now.
        super().handle_exit(sig, frame)
        live = getattr(self.wsgi, "extensions", {}).get("cortex_ui")
        if live is not None:
            import gevent

            gevent.spawn(live.close)  # not from inside the signal handler

    def init_process(self) -> None:
        # wsgi.create() builds each HTTP/1 response from this module attribute; the patch
        # lives in this worker process only (the neuron's workers are untouched).
        wsgi.Response = OneWriteResponse
        util.http_date = DateText(util.http_date)
        wsgi.WSGIErrorsWrapper = LazyErrors  # (base_environ builds one a request)
        policy = getattr(message, "HeaderPolicy", None)  # (gunicorn >= 25)
        if policy is not None and hasattr(policy, "_peer_is_trusted_proxy"):
            policy._peer_is_trusted_proxy = remembered_trust(policy._peer_is_trusted_proxy)
        super().init_process()
