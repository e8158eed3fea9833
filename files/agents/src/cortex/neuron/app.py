"""The neuron's Flask app: wires HTTP routes to the composition root's `Neuron`.

Only this module reads `flask.request`: the modules below take what a request carries
(its body, the caller's headers) as arguments and return plain bodies or byte streams.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.wsgi import ClosingIterator

import cortex
from cortex.core import openapi, recent_sessions
from cortex.core.errors import BadRequest, Unauthorized, Unavailable
from cortex.core.http import (
    error_response,
    install_error_handlers,
    json_body,
    json_response,
    require_token,
    sse_response,
)
from cortex.core.peer import hang_up_check
from cortex.core.validate import get_bool, get_number, get_str, invalid
from cortex.neuron import embeddings, families, inference, status
from cortex.neuron.composition import Neuron
from cortex.neuron.config import MAX_PARALLEL, NeuronConfig
from cortex.neuron.inference import Caller
from cortex.neuron.registry import LoadRequest
from cortex.neuron.sources import list_local, parse_model_id

PRINCIPAL_HEADER = "X-Helexa-Account-Id"
ROUTED_HEADER = "X-Helexa-Routed"  # set by gateways on every request they route
PUBLIC = {"/health", "/version", openapi.PATH}

bp = Blueprint("neuron", __name__)


def create_app(cfg: NeuronConfig, *, prewarm: bool = True) -> Flask:
    app = Flask("cortex.neuron", static_folder=None)  # no files to serve
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    neuron = Neuron(cfg)
    app.extensions["neuron"] = neuron
    install_error_handlers(app)
    app.register_blueprint(bp)
    openapi.install(app, "cortex.neuron")

    @app.before_request
    def _auth() -> None:
        if request.path not in PUBLIC:
            require_token(cfg.auth_token)

    app.wsgi_app = WorkSlots(app.wsgi_app, cfg.http_threads)  # type: ignore[method-assign]
    if prewarm and cfg.default_models:
        neuron.registry.prewarm(cfg.default_model_specs())
    return app


class WorkSlots:
    """Keeps HTTP threads free for /health, /metrics and the other quick reads.

    gunicorn's gthread pool serves every request; a stream, a queued request or a load holds
    its thread for seconds to minutes. Were they allowed every thread, the gateways' polls
    would wait behind them and mark a merely busy neuron unhealthy. So requests that do work
    (every POST but /drain) take one of `threads - reserve` slots, and past that are a fast
    503 the gateway retries elsewhere: a full neuron says so at once instead of going dark.
    (A second listener just for health would need its own server and port in the one
    worker process; a cap keeps one port and no new moving parts.)
    """

    QUICK_POSTS = frozenset({"/drain"})

    def __init__(self, app: Any, threads: int) -> None:
        self.app = app
        self.reserve = max(2, threads // 4)
        self.slots = max(1, threads - self.reserve)
        self._free = threading.BoundedSemaphore(self.slots)

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") in self.QUICK_POSTS:
            return self.app(environ, start_response)
        if not self._free.acquire(blocking=False):
            busy = Unavailable(f"all {self.slots} request slots of this neuron are taken "
                               "(streams, queued requests, loads); retry shortly",
                               code="neuron_busy", retry_after=1)
            return error_response(busy)(environ, start_response)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self._free.release()
            raise
        # Released when the server closes the body: a stream keeps its slot to the end.
        return ClosingIterator(body, [self._free.release])


def _neuron() -> Neuron:
    return current_app.extensions["neuron"]


@bp.get("/version")
def version() -> Any:
    import llama_cpp

    return json_response({"version": cortex.__version__,
                          "engines": {"llama_cpp": llama_cpp.__version__}})


@bp.get("/discovery")
def discovery() -> Any:
    return json_response(status.discovery(_neuron()))


@bp.get("/health")
def health() -> Any:
    # Public, for load balancers' checks; which sessions each model served, only for a
    # caller with the token (the gateways).
    n = _neuron()
    try:
        require_token(n.cfg.auth_token)
    except Unauthorized:
        return json_response(status.health(n, sessions=False))
    return json_response(status.health(n))


@bp.get("/models")
def models() -> Any:
    return json_response(status.models(_neuron()))


@bp.post("/models/load")
def load() -> Any:
    body = json_body()
    model_id = body.get("model_id")
    if model_id is None:
        raise BadRequest("'model_id' is required, e.g. {\"model_id\": \"file:NAME\"}",
                         code="missing_model_id", param="model_id")
    devices = body.get("devices") or []
    if not isinstance(devices, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                for d in devices):
        raise invalid("devices", "expected a list of device indexes")
    req = LoadRequest(model_id=model_id, quant=get_str(body, "quant", "") or "",
                      harness=get_str(body, "harness", "") or "",
                      tensor_parallel=get_number(body, "tensor_parallel", 1, lo=1,
                                                 integer=True),
                      devices=devices, parallel=_parallel(body),
                      embeddings_only=_embeddings_only(body),
                      chat_format=_chat_format(body))
    loaded, fresh = _neuron().registry.load(req)
    return json_response({"status": "loaded", "model_id": loaded.id, "already_loaded": not fresh,
                          "model": loaded.describe()})


def _parallel(body: dict) -> int | None:
    """The load's slot count; absent or null: the neuron's `parallel` setting."""
    if body.get("parallel") is None:
        return None
    return int(get_number(body, "parallel", 0, lo=0, hi=MAX_PARALLEL, integer=True))


def _chat_format(body: dict) -> str:
    """The model family to read the model's output as; absent or "": from its template."""
    name = get_str(body, "chat_format", "") or ""
    if name:
        families.named(name)  # 400 naming the known formats
    return name


def _embeddings_only(body: dict) -> bool | None:
    """Load for embeddings alone (no generation context); absent or null: so for a GGUF
    that names a pooling and has no chat template."""
    value = body.get("embeddings_only")
    if value is not None and not isinstance(value, bool):
        raise invalid("embeddings_only", "expected true, false or null")
    return value


@bp.post("/models/unload")
def unload() -> Any:
    body = json_body()
    loaded = _neuron().registry.unload(body.get("model_id"),
                                       if_idle=get_bool(body, "if_idle", False))
    return json_response({"status": "unloaded", "model_id": loaded.id})


@bp.post("/drain")
def drain() -> Any:
    """{"drained": true|false}: gateways route no new requests to a drained neuron."""
    body = json_body()
    drained = body.get("drained", True)
    if not isinstance(drained, bool):
        raise invalid("drained", "expected true or false")
    n = _neuron()
    n.set_drained(drained)
    scheds = [m.scheduler for m in list(n.registry.models.values())]
    return json_response({"drained": drained,
                          "in_flight": sum(s.in_flight + s.queue_depth for s in scheds)})


@bp.get("/models/<path:model_id>/endpoint")
def endpoint(model_id: str) -> Any:
    loaded = _neuron().registry.find(model_id)
    return json_response({"model_id": loaded.id, "url": request.host_url.rstrip("/") + "/v1"})


@bp.get("/models/<path:model_id>/capabilities")
def model_capabilities(model_id: str) -> Any:
    reg = _neuron().registry
    try:
        d = reg.find(model_id).describe()
    except Exception:
        src = parse_model_id(model_id)
        if src.scheme != "file" or list_local(reg.cfg.models_path, src) is None:
            raise
        return json_response({"model_id": src.canonical, "loaded": False})
    return json_response({k: d[k] for k in ("id", "capabilities", "tool_call", "reasoning",
                                            "limit")} | {"loaded": True})


@bp.get("/v1/models")
def openai_models() -> Any:
    reg = _neuron().registry
    return json_response({"object": "list", "data": [
        {"id": m.id, "object": "model", "created": int(m.loaded_at), "owned_by": "helexa"}
        for m in list(reg.models.values())]})


def _caller() -> Caller:
    return Caller(principal=request.headers.get(PRINCIPAL_HEADER, ""),
                  routed=bool(request.headers.get(ROUTED_HEADER)),
                  session=request.headers.get(recent_sessions.HEADER, ""),
                  hung_up=hang_up_check(request.environ))


def _reply(out: dict | Iterator[bytes]) -> Response:
    return json_response(out) if isinstance(out, dict) else sse_response(out)


@bp.post("/v1/chat/completions")
def chat_completions() -> Any:
    return _reply(inference.handle(_neuron(), json_body(), _caller(), chat=True))


@bp.post("/v1/completions")
def completions() -> Any:
    return _reply(inference.handle(_neuron(), json_body(), _caller(), chat=False))


@bp.post("/v1/embeddings")
def create_embeddings() -> Any:
    return Response(embeddings.handle(_neuron(), json_body(), _caller()),
                    mimetype="application/json")


@bp.post("/tokenize")
def tokenize() -> Any:
    return json_response(inference.count_tokens(_neuron(), json_body()))


@bp.get("/metrics")
def metrics() -> Any:
    return Response(generate_latest(_neuron().metrics.registry), mimetype=CONTENT_TYPE_LATEST)
