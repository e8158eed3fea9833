"""One event stream for every open dashboard: fleet state, rates, finished requests.

A sampler (a thread; a greenlet under gevent's patching) reads the poller's cache once a
second while someone watches, and hands the same encoded event to every subscriber's
queue. The request path adds a `request` event when one ends. A subscriber that falls
behind loses events rather than holding memory: the next `state` is complete again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cortex.core.errors import TooManyRequests
from cortex.core.http import sse_event
from cortex.gateway.ui import views

if TYPE_CHECKING:
    from cortex.gateway.composition import Gateway

log = logging.getLogger(__name__)

Sees = Callable[[dict[str, Any]], bool]

HEARTBEAT_SECS = 15.0
IDLE_STOP_SECS = 60.0  # the sampler rests when nobody has watched for this long


class Live:
    def __init__(self, gw: Gateway, *, tick: float = 1.0, history: int = 600) -> None:
        self.gw = gw
        self.tick = tick
        self.rates = views.Rates()
        self.series: deque[dict[str, Any]] = deque(maxlen=history)  # one point a tick
        # Each subscriber's queue, and which finished requests it may see (None: all).
        self._subs: dict[queue.Queue, Sees | None] = {}
        self._lock = threading.Lock()
        self._sampler: threading.Thread | None = None
        self._last_watched = time.monotonic()
        self.worker = {"pid": os.getpid(), "host": socket.gethostname()}
        self.closing = False
        # Open streams cost a greenlet and a queue each: bounded per worker and per viewer.
        g = gw.cfg.gateway
        self.max_streams, self.max_per_viewer = g.ui_max_streams, g.ui_max_streams_per_key
        self._by_viewer: dict[str, int] = {}
        self._viewer_of: dict[queue.Queue, str] = {}

    # -- subscribers -------------------------------------------------------------------
    def subscribe(self, sees: Sees | None = None, viewer: str = "", admin: bool = False
                  ) -> queue.Queue:
        """A queue of this worker's events for one stream. `viewer` (a key id, or the
        address of an anonymous one) may hold `max_per_viewer` streams; the worker holds
        `max_streams`, admins' beside them (an admin can always watch). Past either, 429."""
        q: queue.Queue = queue.Queue(maxsize=256)
        with self._lock:
            mine = self._by_viewer.get(viewer, 0)
            if mine >= self.max_per_viewer or (
                    not admin and len(self._subs) - self._by_viewer.get("admin", 0)
                    >= self.max_streams):
                whose = "this key" if mine >= self.max_per_viewer else "this gateway worker"
                raise TooManyRequests(
                    f"{whose} has the most dashboard streams open that it may "
                    f"({self.max_per_viewer if whose == 'this key' else self.max_streams}); "
                    "close one (another tab?) and retry", code="too_many_streams",
                    retry_after=int(HEARTBEAT_SECS))
            self._by_viewer[viewer] = mine + 1
            self._viewer_of[q] = viewer
            self._subs[q] = sees
            # Heard only while watched: a record is built per request just for listeners.
            if self._on_request not in self.gw.recent.listeners:
                self.gw.recent.listeners.append(self._on_request)
        self.ensure_sampling()
        return q

    def close(self) -> None:
        """End every stream now (the worker is stopping): pages reconnect to a live one
        instead of holding this worker until its graceful timeout."""
        with self._lock:
            self.closing = True
            subs = list(self._subs)
        for q in subs:
            with contextlib.suppress(queue.Full):  # a full queue wakes its stream anyway
                q.put_nowait(None)

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._subs.pop(q, None)
            viewer = self._viewer_of.pop(q, None)
            if viewer is not None:
                left = self._by_viewer.get(viewer, 1) - 1
                if left > 0:
                    self._by_viewer[viewer] = left
                else:
                    self._by_viewer.pop(viewer, None)
            self._last_watched = time.monotonic()
            if not self._subs and self._on_request in self.gw.recent.listeners:
                self.gw.recent.listeners.remove(self._on_request)

    @property
    def watchers(self) -> int:
        return len(self._subs)

    def publish(self, event: str, data: Any, item: dict[str, Any] | None = None) -> None:
        raw = sse_event(data, event)
        with self._lock:
            subs = list(self._subs.items())
        for q, sees in subs:
            if item is not None and sees is not None and not sees(item):
                continue
            with contextlib.suppress(queue.Full):  # a slow page misses this one
                q.put_nowait(raw)

    def _on_request(self, item: dict[str, Any]) -> None:
        try:
            if self._subs:
                self.publish("request", item, item)
        except Exception:  # the request is done; the dashboard must never break it
            log.exception("publishing a finished request failed")

    # -- sampling ----------------------------------------------------------------------
    def ensure_sampling(self) -> None:
        with self._lock:
            self._last_watched = time.monotonic()
            if self._sampler is None or not self._sampler.is_alive():
                self._sampler = threading.Thread(target=self._run, name="ui-sampler",
                                                 daemon=True)
                self._sampler.start()

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                log.exception("dashboard sampler failed")
            time.sleep(self.tick)
            with self._lock:
                if not self._subs and time.monotonic() - self._last_watched > IDLE_STOP_SECS:
                    self._sampler = None
                    return

    def sample(self) -> dict[str, Any]:
        point = {"t": round(time.time(), 3),
                 "models": self.rates.sample(list(self.gw.fleet.nodes.values()),
                                             lambda mid: views.public_id(self.gw, mid))}
        self.series.append(point)
        if self._subs:
            self._publish_state()
            self.publish("tick", point)
        return point

    def _publish_state(self) -> None:
        """Admins' streams get the state with its error text, the others without."""
        with self._lock:
            subs = [(q, self._viewer_of.get(q) == "admin") for q in self._subs]
        raw = {admin: sse_event(self.state(admin=admin), "state")
               for admin in {a for _, a in subs}}
        for q, admin in subs:
            with contextlib.suppress(queue.Full):  # a slow page misses this one
                q.put_nowait(raw[admin])

    def state(self, admin: bool = True) -> dict[str, Any]:
        return views.state(self.gw, admin=admin)

    def hello(self, viewer: dict[str, Any], sees: Sees | None = None) -> dict[str, Any]:
        g = self.gw.cfg
        recent = [r for r in self.gw.recent.items() if sees is None or sees(r)]
        return {"viewer": viewer, "worker": self.worker, "tick_secs": self.tick,
                "require_auth": g.entitlements.require_auth,
                "admin_enabled": bool(g.gateway.admin_keys),
                "series": list(self.series), "requests": recent[:100]}
