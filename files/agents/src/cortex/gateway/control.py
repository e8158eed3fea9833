"""The control plane, in Flask: the fleet catalogue (`/v1/models`), health, admin routes.

Inference routes are not here: the data plane (`dataplane.py`) serves them in front of
this app. Blueprints of other control-plane pages register on the app `control_plane`
builds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Flask, current_app

import cortex
from cortex.core import openapi
from cortex.core.errors import ApiError, BadRequest, NotFound
from cortex.core.http import bearer_token, install_error_handlers, json_body, json_response
from cortex.gateway.composition import Gateway
from cortex.gateway.ui import install_ui
from cortex.gateway.upstream import neuron_error

bp = Blueprint("gateway", __name__)


def control_plane(gw: Gateway, inference_paths: Sequence[str] = ()) -> Flask:
    """The Flask app; `inference_paths`: the data plane's routes, for `GET /` to list."""
    app = Flask("cortex.gateway", static_folder=None)  # the dashboard serves its own
    app.config["MAX_CONTENT_LENGTH"] = gw.cfg.gateway.max_body_bytes
    app.extensions["gateway"] = gw
    app.extensions["inference_paths"] = list(inference_paths)
    install_error_handlers(app)
    app.register_blueprint(bp)
    install_ui(app, gw)
    openapi.install(app, "cortex.gateway")
    return app


def _gw() -> Gateway:
    return current_app.extensions["gateway"]


def _admin() -> Gateway:
    """The gateway, for a request presenting an admin key (else 401/403)."""
    gw = _gw()
    gw.auth.require_admin(bearer_token())
    return gw


@bp.get("/")
def index() -> Any:
    # The data plane's routes, then this app's GET routes that take no argument (admin
    # routes aside), read from the routes themselves so that the list cannot go stale.
    own = sorted(r.rule for r in current_app.url_map.iter_rules()
                 if "GET" in r.methods and not r.arguments and r.rule != "/"
                 and not r.rule.startswith("/admin/"))
    return json_response({"name": "helexa.cortex", "version": cortex.__version__,
                          "endpoints": current_app.extensions["inference_paths"] + own})


@bp.get("/health")
def health() -> Any:
    """Public: the state and what is unservable. Why (a neuron's own error: paths, hub
    messages) only with an admin key, and in the log."""
    gw = _gw()
    return json_response(gw.health(detail=_is_admin(gw)))


def _is_admin(gw: Gateway) -> bool:
    key = bearer_token()
    if not key:
        return False
    try:
        gw.auth.require_admin(key)
    except ApiError:
        return False
    return True


@bp.get("/v1/models")
def models() -> Any:
    gw = _gw()
    gw.auth.principal(bearer_token())
    return json_response({"object": "list",
                          "data": gw.catalogue.listing(gw.fleet, gw.router.feasible)})


@bp.route("/v1/responses/<response_id>", methods=["GET", "DELETE"])
@bp.post("/v1/responses/<response_id>/cancel")
@bp.get("/v1/responses/<response_id>/input_items")
def stored_response(response_id: str) -> Any:
    """The Responses API's stored-response routes: this gateway is stateless."""
    raise NotFound(f"no response {response_id!r}: this gateway is stateless and keeps no "
                   "responses; read the response from the reply that created it",
                   code="response_not_found", param="response_id")


# -- admin -------------------------------------------------------------------------------
@bp.get("/admin/nodes")
def admin_nodes() -> Any:
    gw = _admin()
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
    gw = _admin()
    node = gw.node(name)
    body = _node_call(gw, node, "/drain", {"drained": drained}, read=10)
    return json_response({"node": name, "drained": node.drained,
                          "in_flight": body.get("in_flight", 0)})


@bp.post("/admin/nodes/<name>/models/load")
def admin_load(name: str) -> Any:
    return _admin_model_call(name, "load")


@bp.post("/admin/nodes/<name>/models/unload")
def admin_unload(name: str) -> Any:
    return _admin_model_call(name, "unload")


@bp.get("/admin/fleet")
def admin_fleet() -> Any:
    """What `cortex top` shows: nodes, each model's replicas, queues and loads, and the
    scale events and routing counts of the worker that answers."""
    gw = _admin()
    return json_response(gw.scaler.view())


@bp.post("/admin/models/load")
def admin_models_load() -> Any:
    """Load a model on `node`, or one more replica of it on the best node that has none."""
    gw, entry, name = _fleet_model_request()
    if name is not None:
        reply = _admin_model_call(name, "load")
        gw.scaler.operator_did(entry.id, "up", name)
        return reply
    node, already = gw.scaler.add_replica(entry)
    return json_response({"status": "loaded", "model": entry.id, "node": node.name,
                          "already_loaded": already})


@bp.post("/admin/models/unload")
def admin_models_unload() -> Any:
    """Unload a model from `node`, or from every node that has it loaded."""
    gw, entry, name = _fleet_model_request()
    nodes = [gw.node(name)] if name is not None else [
        n for n in gw.fleet.nodes.values() if n.loaded(entry.load_id)]
    done = []
    for node in nodes:
        _node_call(gw, node, "/models/unload", {"model_id": entry.load_id})
        done.append(node.name)
        gw.scaler.operator_did(entry.id, "down", node.name)
    return json_response({"status": "unloaded", "model": entry.id, "nodes": done,
                          "replicas_min": entry.replicas.min})


def _fleet_model_request() -> tuple[Gateway, Any, str | None]:
    """An admin's fleet-wide load or unload: the gateway, the catalogue entry the body's
    `model` names, and the body's `node` (None: the gateway picks)."""
    gw = _admin()
    body = json_body()
    entry = _catalogued(gw, body.get("model"))
    name = body.get("node")
    return gw, entry, None if name is None else str(name)


def _catalogued(gw: Gateway, model: Any) -> Any:
    if not isinstance(model, str) or not model:
        raise BadRequest("model: field required (a catalogue id or alias)",
                         code="missing_model_field", param="model")
    entry = gw.catalogue.resolve(model)
    if entry is None:
        raise NotFound(f"model {model!r} is not in the catalogue; known models: "
                       f"{', '.join(sorted(gw.catalogue.public_ids())) or 'none'}",
                       code="model_not_found", param="model")
    return entry


def _admin_model_call(name: str, action: str) -> Any:
    """Load or unload a model on one node; catalogue ids and aliases resolve to load ids."""
    gw = _admin()
    node = gw.node(name)
    body = json_body()
    entry = gw.catalogue.resolve(str(body.get("model", "")))
    call: dict[str, Any] = {"model_id": entry.load_id if entry else body.get("model")}
    read = 60.0
    if action == "load":
        call["harness"] = body.get("harness") or (entry.harness if entry else "")
        call["quant"] = body.get("quant") or (entry.quant if entry else "")
        read = gw.cfg.gateway.load_timeout_secs
    return json_response(_node_call(gw, node, f"/models/{action}", call, read=read))


def _node_call(gw: Gateway, node: Any, path: str, call: dict[str, Any], *,
               read: float = 60.0) -> dict[str, Any]:
    """POST `call` to a neuron for an admin, then read the neuron again (the change shows
    at once); the neuron's refusal is the admin's error."""
    status, reply = gw.upstream.post_json(f"{node.endpoint}{path}", call, read=read)
    gw.fleet.refresh(node)
    if status != 200:
        raise neuron_error(status, reply, node.name)
    return reply
