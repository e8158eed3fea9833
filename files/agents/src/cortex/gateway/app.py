"""The gateway's Flask app factory: OpenAI routes, the fleet catalogue, health, admin."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import cortex
from cortex.core import openapi
from cortex.core.errors import NotFound
from cortex.core.http import install_error_handlers, json_body, json_response
from cortex.gateway import hotpath  # serves /v1/chat/completions and /v1/completions
from cortex.gateway.anthropic.routes import bp as anthropic_bp
from cortex.gateway.auth import Auth
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.config import GatewayConfig, ModelsConfig
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.router import Router
from cortex.gateway.upstream import Upstream, neuron_error

log = logging.getLogger(__name__)
bp = Blueprint("gateway", __name__)


class Gateway:
    """Everything one gateway worker holds, hung on `app.extensions["gateway"]`."""

    def __init__(self, cfg: GatewayConfig, models: ModelsConfig,
                 metrics: GatewayMetrics | None = None) -> None:
        g = cfg.gateway
        self.cfg = cfg
        self.upstream = Upstream(g.neuron_token, g.connect_timeout_secs, g.read_timeout_secs,
                                 pool=g.upstream_pool_size)
        self.fleet = Fleet(cfg.neurons, self.upstream, g.poll_interval_secs)
        self.catalogue = Catalogue(models, g.default_keep_alive)
        self.metrics = metrics or GatewayMetrics()
        self.router = Router(self.fleet, self.catalogue, self.metrics,
                             strategy=cfg.eviction.strategy, load_timeout=g.load_timeout_secs)
        self.auth = Auth(cfg.entitlements, g.admin_keys, Path(g.state_dir))
        self._stop = threading.Event()

    def start(self) -> None:
        self.fleet.start()
        threading.Thread(target=self._reaper, name="idle-reaper", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.fleet.stop()

    def _reaper(self) -> None:
        while not self._stop.wait(self.cfg.gateway.poll_interval_secs):
            try:
                self.router.reap_idle()
            except Exception:  # the reaper must outlive any one bad poll
                log.exception("idle reaper failed")

    def node(self, name: str) -> Node:
        node = self.fleet.nodes.get(name)
        if node is None:
            raise NotFound(f"no node named {name!r}; nodes: {', '.join(self.fleet.nodes)}",
                           code="node_not_found")
        return node

    def health(self) -> dict[str, Any]:
        nodes = list(self.fleet.nodes.values())
        healthy = [n for n in nodes if n.healthy]
        unservable = []
        for entry in self.catalogue.entries.values():
            feasible = self.router.feasible(entry)
            if not any(n.routable for n in feasible):
                reason = "no_feasible_node" if not feasible else "feasible_nodes_down"
                unservable.append({"node": None, "model": entry.id, "reason": reason,
                                   "detail": f"feasible on: {[n.name for n in feasible]}"})
        for n in healthy:
            for failed in n.activation.get("failed", []):
                unservable.append({"node": n.name, "model": failed.get("model_id"),
                                   "reason": "prewarm_failed", "detail": failed.get("error")})
        if not healthy:
            status = "impaired"
        elif len(healthy) < len(nodes) or unservable:
            status = "degraded"
        else:
            status = "ok"
        return {"status": status, "nodes": {"healthy": len(healthy), "total": len(nodes),
                                            "drained": sum(n.drained for n in nodes)},
                "unservable": unservable}


def create_app(cfg: GatewayConfig, models: ModelsConfig, *, start: bool = True,
               metrics: GatewayMetrics | None = None) -> Flask:
    app = Flask("cortex.gateway")
    app.config["MAX_CONTENT_LENGTH"] = cfg.gateway.max_body_bytes
    gw = Gateway(cfg, models, metrics)
    app.extensions["gateway"] = gw
    install_error_handlers(app)
    app.register_blueprint(bp)
    app.register_blueprint(anthropic_bp)
    openapi.install(app, "cortex.gateway")
    app.wsgi_app = hotpath.HotPath(gw, app.wsgi_app)  # type: ignore[method-assign]
    if start:
        gw.start()
        gw.fleet.wait_first_poll(cfg.gateway.connect_timeout_secs + 2)
    return app


def metrics_app(registry) -> Flask:
    """The metrics listener (SPEC: its own port)."""
    app = Flask("cortex.gateway.metrics")

    @app.get("/metrics")
    def _metrics() -> Response:
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return app


def _gw() -> Gateway:
    return current_app.extensions["gateway"]


@bp.get("/")
def index() -> Any:
    return json_response({"name": "helexa.cortex", "version": cortex.__version__,
                          "endpoints": ["/v1/chat/completions", "/v1/completions",
                                        "/v1/messages", "/v1/messages/count_tokens",
                                        "/v1/models", "/health"]})


@bp.get("/health")
def health() -> Any:
    return json_response(_gw().health())


@bp.get("/v1/models")
def models() -> Any:
    gw = _gw()
    gw.auth.authenticate()
    return json_response({"object": "list", "data": gw.catalogue.listing(gw.fleet, gw.router)})


# -- admin -------------------------------------------------------------------------------
@bp.get("/admin/nodes")
def admin_nodes() -> Any:
    gw = _gw()
    gw.auth.require_admin()
    # Read the neurons now: another worker's drain, or a request that just ended, must show
    # at once to the operator (the modules wait on these states); admin reads are rare.
    gw.fleet.poll_all()
    return json_response({"nodes": [n.summary() for n in gw.fleet.nodes.values()],
                          "health": gw.health()})


@bp.post("/admin/nodes/<name>/drain")
def admin_drain(name: str) -> Any:
    return _set_drained(name, True)


@bp.post("/admin/nodes/<name>/undrain")
def admin_undrain(name: str) -> Any:
    return _set_drained(name, False)


def _set_drained(name: str, drained: bool) -> Any:
    gw = _gw()
    gw.auth.require_admin()
    node = gw.node(name)
    status, body = gw.upstream.post_json(f"{node.endpoint}/drain", {"drained": drained}, read=10)
    if status != 200:
        raise neuron_error(status, body, name)
    gw.fleet.refresh(node)
    return json_response({"node": name, "drained": node.drained,
                          "in_flight": body.get("in_flight", 0)})


@bp.post("/admin/nodes/<name>/models/load")
def admin_load(name: str) -> Any:
    return _admin_model_call(name, "load")


@bp.post("/admin/nodes/<name>/models/unload")
def admin_unload(name: str) -> Any:
    return _admin_model_call(name, "unload")


def _admin_model_call(name: str, action: str) -> Any:
    """Load or unload a model on one node; catalogue ids and aliases resolve to load ids."""
    gw = _gw()
    gw.auth.require_admin()
    node = gw.node(name)
    body = json_body()
    entry = gw.catalogue.resolve(str(body.get("model", "")))
    call: dict[str, Any] = {"model_id": entry.load_id if entry else body.get("model")}
    read = 60.0
    if action == "load":
        call["harness"] = body.get("harness") or (entry.harness if entry else "")
        call["quant"] = body.get("quant") or (entry.quant if entry else "")
        read = gw.cfg.gateway.load_timeout_secs
    status, reply = gw.upstream.post_json(f"{node.endpoint}/models/{action}", call, read=read)
    gw.fleet.refresh(node)
    if status != 200:
        raise neuron_error(status, reply, name)
    return json_response(reply)
