"""The dashboard at /ui/: a static page, a JSON snapshot and one event stream.

The page is plain JavaScript and SVG/canvas shipped in this package (no build step). It
reads `/ui/api/state` once and then `/ui/events`; admin actions go to the admin API
(`/admin/nodes/...`) with the key the operator typed, kept in sessionStorage and sent as
an `Authorization` header only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

from cortex.gateway.recent import RecentRequests

if TYPE_CHECKING:
    from cortex.gateway.composition import Gateway

__all__ = ["RecentRequests", "install_ui"]


def install_ui(app: Flask, gw: Gateway) -> None:
    """Mount the dashboard on `app` (the control plane) for gateway `gw`."""
    from cortex.gateway.ui.live import Live
    from cortex.gateway.ui.routes import bp

    app.extensions["cortex_ui"] = Live(gw)
    app.register_blueprint(bp)
