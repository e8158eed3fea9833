"""The gateway's WSGI app: the composition root's `Gateway`, served by two planes.

The data plane (`dataplane.DataPlane`) takes every inference route and hands any other
path to the control plane (Flask, `control.py`). A new inference route is one entry in
`ROUTES`; a new API family brings its own list (and its `Dialect`).
"""

from __future__ import annotations

from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cortex.gateway.anthropic.routes import ROUTES as ANTHROPIC_ROUTES
from cortex.gateway.composition import Gateway
from cortex.gateway.config import GatewayConfig, ModelsConfig
from cortex.gateway.control import control_plane
from cortex.gateway.dataplane import DataPlane
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.openai_routes import ROUTES as OPENAI_ROUTES
from cortex.gateway.responses.routes import ROUTES as RESPONSES_ROUTES

ROUTES = [*OPENAI_ROUTES, *ANTHROPIC_ROUTES, *RESPONSES_ROUTES]


def create_app(cfg: GatewayConfig, models: ModelsConfig, *, start: bool = True,
               metrics: GatewayMetrics | None = None) -> Flask:
    """The Flask control plane with the data plane in front (as its `wsgi_app`), so the
    object a WSGI server gets is still the Flask app; `extensions["gateway"]` holds the
    composition root."""
    gw = Gateway(cfg, models, metrics)
    app = control_plane(gw, [r.path for r in ROUTES])
    app.wsgi_app = DataPlane(gw, ROUTES, app.wsgi_app)  # type: ignore[method-assign]
    if start:
        gw.start()
        gw.fleet.wait_first_poll(cfg.gateway.connect_timeout_secs + 2)
    return app


def metrics_app(registry) -> Flask:
    """The metrics listener, on its own port (`metrics_listen`)."""
    app = Flask("cortex.gateway.metrics", static_folder=None)

    @app.get("/metrics")
    def _metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app

