"""The data plane: every inference route, as one plain WSGI app in front of the Flask one.

Flask's contexts, URL map and request/response objects cost ~130 us a request here, about
as much as the gateway's own work on a relay, and add nothing to it. Each route is a
`Route` (path, `Dialect`, handler); one prologue runs for all of them (method, auth, body
limit, JSON, `model`, caps) and one place turns an `ApiError` into the client's dialect.
Any other path goes to the fallback app (the Flask control plane) unchanged.

Adding a route: `Route("/v1/x", DIALECT, handler)` in the list the app factory gives to
`DataPlane`. A handler takes the `Call` and returns a `Reply`; it raises `ApiError` for
anything that goes wrong before the reply starts. A new dialect is one `Dialect` value:
its name, how it renders an error, and whether it accepts Anthropic's `x-api-key`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cortex.core.errors import ApiError, BadRequest
from cortex.core.wire import check_json_type, parse_bearer, parse_json_object, too_large
from cortex.gateway.auth import Principal
from cortex.gateway.budget import Ask, ask_for, clamp
from cortex.gateway.catalogue import ModelRef
from cortex.gateway.composition import Gateway
from cortex.gateway.hangup import client_socket
from cortex.gateway.relay.accounting import Tab
from cortex.gateway.relay.coldload import Waiting
from cortex.gateway.relay.dispatch import Outbound
from cortex.gateway.relay.send import Exchange, client_headers
from cortex.gateway.reply import REASONS, Closing, Reply, json_reply

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Dialect:
    """How one API family talks: its error envelope, and the auth header it may use."""

    name: str
    render: Callable[[ApiError], tuple[int, dict[str, Any]]]  # -> (status, JSON body)
    x_api_key: bool = False  # Anthropic's SDKs send `x-api-key` instead of a Bearer token

    def error(self, exc: ApiError) -> Reply:
        status, body = self.render(exc)
        return json_reply(status, body, exc.headers())


def chat_ask(body: dict[str, Any]) -> Ask:
    """What a chat completion asks of a capped key: its input, and its output bound."""
    return ask_for(body, ("max_tokens", "max_completion_tokens"))


@dataclass(frozen=True)
class Route:
    path: str
    dialect: Dialect
    handler: Callable[[Call], Reply]
    # What it asks of a capped key (budget.Ask), or tokens to hold (0: checked, none held).
    reserve: Callable[[dict[str, Any]], Ask | int] = chat_ask


@dataclass
class Call:
    """One request past the prologue: who sent it, what, for which model (resolved through
    the catalogue once, here), and its tab (settled when the reply is closed)."""

    gw: Gateway
    route: Route
    environ: dict[str, Any]
    principal: Principal
    body: dict[str, Any]
    model: ModelRef
    tab: Tab
    _headers: dict[str, str] | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        return self.route.path

    @property
    def headers(self) -> dict[str, str]:
        """The caller's end-to-end headers, lower-cased (werkzeug's header view costs more
        than the rest of the hop)."""
        if self._headers is None:
            self._headers = client_headers(self.environ)
        return self._headers

    def outbound(self, path: str, body: dict[str, Any]) -> Outbound:
        """`body` on its way to the neuron API's `path`, for this call's model and caller."""
        return Outbound(path, body, self.model, self.headers, self.principal,
                        client_socket(self.environ))

    def send(self, path: str, body: dict[str, Any], *, progress: bool = False
             ) -> Exchange | Iterator[Waiting | Exchange]:
        """Relay `body` to a neuron (the relay's dispatch: routing, cold loads, retries):
        its answer, or, with `progress` while a cold load runs, `Waiting` ticks first."""
        return self.gw.dispatcher.send(self.outbound(path, body), self.tab, progress=progress)


def read_json(environ: dict[str, Any], limit: int) -> dict[str, Any]:
    """The JSON object in the request body, or a 4xx naming what is wrong."""
    check_json_type(environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower())
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0:
            raise ApiError(f"Content-Length {length!r} is not a byte count", code="bad_request",
                           status=400, type="invalid_request_error")
        if size > limit:
            raise too_large(limit)
        raw = stream.read(size)
    else:  # chunked upload: read one byte past the limit to know it was crossed
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise too_large(limit)
    return parse_json_object(raw)


def presented_key(environ: dict[str, Any], x_api_key: bool) -> str:
    key = parse_bearer(environ.get("HTTP_AUTHORIZATION", ""))
    if not key and x_api_key:
        key = environ.get("HTTP_X_API_KEY", "").strip()
    return key


class DataPlane:
    """WSGI: the routes given here (any method), every other path to `fallback`."""

    def __init__(self, gw: Gateway, routes: Iterable[Route],
                 fallback: Callable[..., Iterable[bytes]]) -> None:
        self.gw, self.fallback = gw, fallback
        self.routes = {r.path: r for r in routes}

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        route = self.routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            return self.fallback(environ, start_response)
        started = time.monotonic()
        tab = None
        try:
            call = self.prologue(route, environ, started)
            tab = call.tab
            reply = route.handler(call)
        except ApiError as exc:
            reply = route.dialect.error(exc)
        except Exception as exc:  # the client still gets its dialect's envelope
            log.exception("unhandled error on %s %s", environ.get("REQUEST_METHOD"),
                          route.path)
            reply = route.dialect.error(ApiError(f"internal error: {type(exc).__name__}",
                                                 code="internal_error"))
        start_response(REASONS.get(reply.status, str(reply.status)),
                       list(reply.headers.items()))
        body = [reply.body] if isinstance(reply.body, bytes) else reply.body
        if tab is None:
            return body
        # Whatever the handler did, the request is settled when the server closes its reply:
        # once, after the body is sent (or the client left, or the worker is stopping).
        return Closing(body, tab.settle)

    def prologue(self, route: Route, environ: dict[str, Any], started: float) -> Call:
        """What every inference route checks first, in this order."""
        method = environ.get("REQUEST_METHOD", "")
        if method != "POST":
            raise ApiError(f"Method Not Allowed: {method} {route.path}; use POST",
                           code="method_not_allowed", status=405, type="invalid_request_error")
        gw = self.gw
        x_api_key = route.dialect.x_api_key
        principal = gw.auth.principal(presented_key(environ, x_api_key), x_api_key)
        gw.auth.check_caps(principal)  # before reading a body a spent key may not send
        body = read_json(environ, gw.cfg.gateway.max_body_bytes)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise BadRequest("model: field required (a model id from GET /v1/models)",
                             code="missing_model_field", param="model")
        model = gw.catalogue.lookup(name)
        hold = gw.auth.admit(principal, lambda: gw.limits.fill(model, route.reserve(body)))
        if hold.ask is not None:  # a capped key: the body asks no more than it may spend
            clamp(body, hold.ask, hold.output)
        tab = gw.ledger.open(route.path, principal, hold, started)
        return Call(gw, route, environ, principal, body, model, tab)

