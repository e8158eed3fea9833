"""The dashboard's routes: the page, a JSON snapshot, the event stream."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, send_from_directory

from cortex.core.errors import Unauthorized
from cortex.core.http import SSE_HEADERS, bearer_token, json_response, sse_event
from cortex.gateway.ui.live import HEARTBEAT_SECS, Live

bp = Blueprint("ui", __name__, url_prefix="/ui", static_folder="static",
               static_url_path="/static")

# The page loads only its own files and talks only to this origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY", "Cache-Control": "no-cache",
}


def _live() -> Live:
    return current_app.extensions["cortex_ui"]


def _viewer(live: Live) -> dict[str, Any]:
    """Who is looking: an admin, a client key, or (without require_auth) anyone. With
    require_auth, an unknown or missing key gets the usual 401."""
    auth, key = live.gw.auth, bearer_token()
    try:
        auth.require_admin(key)
        return {"admin": True, "key_id": "admin"}
    except Unauthorized:
        pass
    p = auth.principal(key)
    return {"admin": False, "key_id": p.key_id if p.entry is not None else None}


def _sees(live: Live, viewer: dict[str, Any]) -> Any:
    """Which finished requests a viewer may see: all on an open gateway or for an admin;
    with require_auth, a client key sees only its own."""
    if viewer["admin"] or not live.gw.cfg.entitlements.require_auth:
        return None
    own = viewer["key_id"]
    return lambda item: item["key_id"] == own


@bp.get("/")
def page() -> Response:
    resp = send_from_directory(bp.static_folder, "index.html", max_age=0)
    resp.headers.update(PAGE_HEADERS)
    return resp


@bp.after_request
def _headers(resp: Response) -> Response:
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    return resp


@bp.get("/api/state")
def api_state() -> Response:
    live = _live()
    viewer = _viewer(live)
    live.ensure_sampling()
    return json_response({"hello": live.hello(viewer, _sees(live, viewer)),
                          "state": live.state(admin=viewer["admin"])})


@bp.get("/events")
def events() -> Response:
    live = _live()
    viewer = _viewer(live)
    sees = _sees(live, viewer)
    # Streams are counted per key; anonymous viewers (an open gateway) per address.
    who = "admin" if viewer["admin"] else (viewer["key_id"]
                                           or f"anonymous@{request.remote_addr}")
    q = live.subscribe(sees, who, admin=viewer["admin"])

    def stream() -> Iterator[bytes]:
        try:
            yield b"retry: 2000\n\n"
            yield sse_event(live.hello(viewer, sees), "hello")
            yield sse_event(live.state(admin=viewer["admin"]), "state")
            while not live.closing:
                try:
                    raw = q.get(timeout=HEARTBEAT_SECS)
                except queue.Empty:
                    raw = b": keep-alive\n\n"  # also how a closed connection is noticed
                if raw is None:  # the worker is stopping
                    return
                yield raw
        finally:
            live.unsubscribe(q)

    return Response(stream(), mimetype="text/event-stream", headers=SSE_HEADERS)
