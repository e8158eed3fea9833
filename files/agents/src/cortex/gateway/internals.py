"""Every reach of the gateway process into a library's private parts, behind one fence.

Each hook says why it is here (a measured cost, or a bug it works around), and each is
checked when this module is imported: a library upgrade that moves what a hook relies on
makes `cortex serve` refuse to start (and tests/test_gateway_internals.py fail), naming
what moved, instead of misbehaving quietly. Nothing else in the gateway touches a private
name of gunicorn, threading or prometheus-client. (The neuron's hooks into
llama-cpp-python are the neuron's.)

- gunicorn's reply (`install_worker_hooks`, in each gateway worker): the head goes out
  with the first body bytes, one write instead of two (~0.1 ms of added latency for a small
  reply: two segments, two client wake-ups); the `Date` text is kept for its second (1.9 us
  a request); a peer's trust for forwarding headers is kept per address (3.4 us: an
  `ipaddress` parse and network tests); `wsgi.errors`' streams are looked up when written
  to (2 us: a logger lookup, under gevent a Python-level lock).
- threading's table of threads (`forked_threads`, `keep_forked_threads`): gevent forks the
  master's greenlets into each worker, where threading has forgotten them; put back, they
  end quietly instead of logging a KeyError each (gevent/gevent#2130).
- prometheus-client's histogram (`observe_many`): many observations added in one pass
  (a buffered flush of a second's requests), where `observe` locks and writes its
  multiprocess file once an observation.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from gunicorn import util
from gunicorn.http import message, wsgi
from prometheus_client import metrics as prom_metrics

from cortex.gateway.http1 import send_all


class InternalsMoved(ImportError):
    """A library no longer has what one of the gateway's hooks relies on."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise InternalsMoved(f"{what}: the gateway's hook into it (gateway/internals.py) must "
                             "follow the library's change before this version can be used")


def _uses(fn: Any, *names: str) -> bool:
    """`fn`'s code refers to each of `names` (an attribute it reads, sets or calls)."""
    code = getattr(fn, "__code__", None)
    return code is not None and all(n in code.co_names for n in names)


# -- what the hooks rely on, checked at import ----------------------------------------------
def check() -> None:
    """Raise InternalsMoved, naming it, if anything a hook relies on is not there."""
    _require(isinstance(getattr(wsgi, "Response", None), type)
             and _uses(wsgi.Response.write, "send_headers", "chunked", "_emit_body")
             and all(hasattr(wsgi.Response, n) for n in (
                 "_emit_body", "default_headers", "send_headers", "can_sendfile", "close")),
             "gunicorn.http.wsgi.Response (writes its body through _emit_body)")
    _require(callable(getattr(util, "http_date", None)), "gunicorn.util.http_date")
    _require(isinstance(getattr(wsgi, "WSGIErrorsWrapper", None), type)
             and _uses(wsgi.WSGIErrorsWrapper.__init__, "streams")
             and _uses(wsgi.base_environ, "WSGIErrorsWrapper"),
             "gunicorn.http.wsgi.WSGIErrorsWrapper (built per request by base_environ)")
    _require(callable(getattr(getattr(message, "HeaderPolicy", None),
                              "_peer_is_trusted_proxy", None)),
             "gunicorn.http.message.HeaderPolicy._peer_is_trusted_proxy")
    _require(isinstance(getattr(threading, "_active", None), dict), "threading._active")
    _require(_uses(prom_metrics.Histogram._metric_init, "_upper_bounds", "_sum", "_buckets"),
             "prometheus_client Histogram's _upper_bounds, _sum and _buckets")


check()


# -- gunicorn's reply ----------------------------------------------------------------------
class OneWriteResponse(wsgi.Response):
    """gunicorn's HTTP/1 response, its head held back and sent with the first body bytes
    (`_emit_body` is gunicorn's hook for framing the body)."""

    _head = b""

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._head = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _emit_body(self, data: bytes) -> None:
        head, self._head = self._head, b""
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        send_all(self.sock, head + data)

    def can_sendfile(self) -> bool:
        return False  # sendfile would put the body on the wire ahead of the held head

    def close(self) -> None:
        self.send_headers()
        if self._head:  # no body at all (HEAD, 204, an empty reply): the head alone
            head, self._head = self._head, b""
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
    """gunicorn's per-request check that the peer is a trusted proxy, kept per address (its
    answer for an address is fixed while the worker runs, as is the config it reads)."""
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

    trusted.remembers = decide  # type: ignore[attr-defined]
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


def install_worker_hooks() -> None:
    """In a gateway worker process (never the master, never a neuron): gunicorn builds each
    HTTP/1 response, date and `wsgi.errors` from these module attributes."""
    wsgi.Response = OneWriteResponse
    if not isinstance(util.http_date, DateText):
        util.http_date = DateText(util.http_date)
    wsgi.WSGIErrorsWrapper = LazyErrors
    policy = message.HeaderPolicy
    if not hasattr(policy._peer_is_trusted_proxy, "remembers"):
        policy._peer_is_trusted_proxy = remembered_trust(policy._peer_is_trusted_proxy)


# -- threading's table ---------------------------------------------------------------------
def forked_threads() -> dict[int, threading.Thread]:
    """In the master before a fork: its threads (greenlets under gevent), by ident."""
    return dict(threading._active)


def keep_forked_threads(threads: dict[int, threading.Thread]) -> None:
    """In the new worker: the master's threads, still running here as greenlets, back in
    threading's table, so that each ends by removing itself without a KeyError."""
    for ident, thread in threads.items():
        threading._active.setdefault(ident, thread)


# -- prometheus-client's histogram ---------------------------------------------------------
def observe_many(child: Any) -> Callable[[Sequence[float]], None]:
    """A function adding many observations to a histogram's child in one pass: its sum once
    and each bucket once (the bucket of an observation is the first bound it does not
    exceed), as prometheus-client keeps them."""
    bounds, total, buckets = child._upper_bounds, child._sum, child._buckets

    def add(values: Sequence[float]) -> None:
        counts: dict[int, int] = {}
        for v in values:
            i = bisect_left(bounds, v)
            counts[i] = counts.get(i, 0) + 1
        total.inc(sum(values))
        for i, n in counts.items():
            buckets[i].inc(n)

    return add
