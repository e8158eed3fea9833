"""Where a request goes, and getting it there: the gateway's one routing decision.

`Dispatcher.send` serves every relayed request, streaming or not, of every dialect:

1. refuse a prompt the catalogue says is too long (before anything loads);
2. the model's replicas (`Fleet.replicas`: routable, the model loaded), none of them tried
   yet, in the order the placement policy gives (`placement.py`; least busy by default,
   counting what this worker has sent and not seen finish);
3. none loaded: a cold load (`Router.load`, single-flighted), heard as `Waiting` ticks by
   a caller that asked for `progress` (a stream, which can say so to its client);
4. send to the first choice. Before the first byte of an answer reaches the client:
   - a replica that refuses as full (a 503: queue full, slots taken, unloading), or as
     full for this account (a 429: it holds `max_per_principal` requests there), hands
     the request to the next choice (`spill`); only when every replica has refused does
     the client get the last refusal, with its Retry-After;
   - a transport failure (cannot connect, closed with no reply) or a drained or stopping
     neuron is tried once more elsewhere, with a cold load if no replica is left;
   - a neuron that had the request and gave no reply in time is a 504, never sent to a
     second replica (it may still be running it there);
   - a non-streaming request whose client hangs up, or whose read timeout passes, is
     stopped on the neuron and billed what it generated (`relay.stopped`);
   - any other answer (200, or the neuron's own 4xx/5xx) is the request's.

One request, one `Exchange` (set on its tab for the bill), one `cortex_routing_total{model,
reason}`.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Collection, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from cortex.core import fastjson, recent_sessions
from cortex.core.errors import ApiError, BadGateway, BadRequest, GatewayTimeout
from cortex.gateway.affinity import Key
from cortex.gateway.auth import Principal
from cortex.gateway.catalogue import ModelRef
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.placement import COLD, SPILL, Choice, InFlight, Placement
from cortex.gateway.relay.accounting import Tab, estimate_prompt_tokens
from cortex.gateway.relay.coldload import Waiting, waiting
from cortex.gateway.relay.send import Exchange, refusal
from cortex.gateway.relay.stopped import WAIT_S, Stopping, error, settle_reply
from cortex.gateway.router import Router
from cortex.gateway.upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)

# A neuron's 503 codes that say it takes no requests at all now (try once elsewhere, as a
# transport failure); any other 503 is a replica too full to take this one (spill), and
# its one 429 a replica where this account holds all it may (spill: the limit is a
# replica's, so that one account cannot take all of its slots).
GONE = frozenset({"node_drained", "shutting_down"})
FULL = frozenset({429, 503})
TICK_SECS = 1.0  # how often a request waiting on a cold load hears of it


@dataclass
class Outbound:
    """A request on its way to a neuron: the neuron API `path`, the `body` (its `model`
    becomes the id the neuron knows), the `model` the prologue resolved, the client's
    end-to-end `headers` (lower-cased), and who sends it."""

    path: str
    body: dict[str, Any]
    model: ModelRef
    headers: dict[str, str]
    principal: Principal
    client: Any = None  # the client's socket: watched while a whole reply is awaited
    session: Key | None = None  # its session (the placement policy's reading), if any
    stream: bool = field(init=False)

    def __post_init__(self) -> None:
        self.stream = self.body.get("stream") is True


class Dispatcher:
    def __init__(self, fleet: Fleet, router: Router, placement: Placement,
                 in_flight: InFlight, upstream: Upstream, metrics: GatewayMetrics, *,
                 read_timeout: float) -> None:
        self.fleet, self.router, self.placement = fleet, router, placement
        self.in_flight, self.upstream, self.metrics = in_flight, upstream, metrics
        self.read_timeout = read_timeout
        self.tick = TICK_SECS

    def send(self, req: Outbound, tab: Tab, *, progress: bool = False
             ) -> Exchange | Iterator[Waiting | Exchange]:
        """The neuron's answer to `req` (its status in; set on `tab`), or, when `progress`
        is asked for and a cold load is under way, an iterator of `Waiting` ticks that ends
        with it. Raises ApiError for what fails before that (a 4xx/5xx for the client)."""
        steps = self._dispatch(req, tab, progress)
        first = next(steps)
        if isinstance(first, Exchange):
            steps.close()
            return first
        return itertools.chain([first], steps)

    def loaded(self, req: Outbound) -> Node | None:
        """The replica `req` would try first, if its model is loaded anywhere (for a call
        that must not load a model, such as counting tokens)."""
        replicas = self.fleet.replicas(req.model.load_id)
        if not replicas:
            return None
        req.session = self.placement.session(req, req.principal.account_id)
        return self.placement.order(req, replicas)[0].node

    # -- the decision ----------------------------------------------------------------------
    def _dispatch(self, req: Outbound, tab: Tab, progress: bool
                  ) -> Generator[Waiting | Exchange, None, None]:
        check_context(req.model, req.body)
        payload = fastjson.dumps(dict(req.body, model=req.model.load_id))
        req.session = self.placement.session(req, req.principal.account_id)
        headers = self._headers(req)
        tried: set[str] = set()
        failure: ApiError | None = None  # unreachable or gone: one more try elsewhere
        full: ApiError | None = None  # the last refusal of a full replica
        while True:
            try:  # (once a replica was full, a cold load elsewhere is the scaler's call)
                choices = yield from self.route(req, tried, cold=full is None,
                                                progress=progress)
            except ApiError:
                if failure is None:
                    raise
                raise _unreachable(req, failure) from None
            if not choices:  # every replica refused as full
                if full.status == 503:  # (not this account's limit)
                    self.metrics.replicas_full(req.model.public_id).inc()
                raise full
            for choice in choices:
                node = choice.node
                tried.add(node.name)
                attempt = self._try(req, node, payload, headers, tab)
                if isinstance(attempt, Exchange):
                    reason = SPILL if full is not None else choice.reason
                    self.metrics.routing(req.model.public_id, reason).inc()
                    if attempt.status == 200:
                        self.placement.served(req, node)
                    tab.attach(attempt, req.body)
                    if attempt.stopped:  # its client left or its time ran out
                        err, unknown = settle_reply(attempt, attempt.stopped,
                                                    self.read_timeout)
                        if unknown:
                            tab.lost(req.body)
                        raise err
                    yield attempt
                    return
                if attempt.status in FULL and attempt.code not in GONE:
                    full = attempt  # too full: the next choice may take it
                    continue
                if failure is not None:
                    raise _unreachable(req, attempt)
                failure = attempt
                break  # look again: other replicas, else a cold load elsewhere

    def route(self, req: Outbound, exclude: Collection[str] = frozenset(), *,
              cold: bool = True, progress: bool = False
              ) -> Generator[Waiting, None, list[Choice]]:
        """The replicas to try for `req` (none in `exclude`), best first. With none loaded
        and `cold`, a cold load makes one (heard as `Waiting` ticks with `progress`; it
        raises when no node can load the model); without `cold`, none."""
        while True:
            replicas = self.fleet.replicas(req.model.load_id)
            if exclude:
                replicas = [n for n in replicas if n.name not in exclude]
            if replicas:
                return self.placement.order(req, replicas)
            if not cold:
                return []
            if progress:
                node = yield from waiting(self.router, self.fleet, req.model, exclude,
                                          self.tick)
            else:
                node = self.router.load(req.model, exclude)
            if node is not None:
                return [Choice(node, COLD)]
            # another request's load ended: look again

    # -- one attempt -----------------------------------------------------------------------
    def _try(self, req: Outbound, node: Node, payload: bytes, headers: dict[str, str],
             tab: Tab) -> Exchange | ApiError:
        """Send to `node`: its answer, or why the request may go elsewhere (an ApiError
        whose status 429 or 503 means full, anything else unreachable or gone). A
        non-streaming request is watched meanwhile: one stopped comes back with `stopped`
        set."""
        load_id = req.model.load_id
        sent = self.in_flight.add(node.name, load_id)  # before the send: a burst sees it
        self.router.routed(node, load_id)
        sent_at = time.monotonic()
        watch = None if req.stream else Stopping(req.client, self.read_timeout)
        try:
            response = self.upstream.open(
                "POST", f"{node.endpoint}{req.path}", payload, headers,
                read=None if watch is None else self.read_timeout + WAIT_S,
                stop=None if watch is None else watch.stop)
        except UpstreamError as exc:
            self.in_flight.done(node.name, load_id, sent)
            stopped = watch.reason() if watch is not None else ""
            if stopped:  # it had the request; it said nothing of what it generated
                self._failed(req, node, "upstream_timeout" if stopped == "deadline"
                             else "client_closed")
                tab.lost(req.body)
                raise error(stopped, node.name, self.read_timeout) from None
            self._failed(req, node, "upstream_timeout" if exc.timed_out else "upstream_failed")
            if exc.timed_out:
                raise GatewayTimeout(f"{node.name} gave no reply to the request within "
                                     f"{self.read_timeout:g} s",
                                     code="upstream_timeout") from None
            log.warning("%s failed before the first byte (%s)", node.name, exc)
            self.fleet.refresh(node)
            # (the client gets the node's name; its address and the error, the log)
            return BadGateway(f"{node.name} could not be reached",
                              code="upstream_connection_error")
        ex = Exchange(node, req.model, response, sent_at - tab.started,
                      lambda: self.in_flight.done(node.name, load_id, sent))
        ex.stopped = watch.reason() if watch is not None else ""
        if response.status not in FULL or ex.stopped:
            self.metrics.target(req.model.public_id, node.name).requests.inc()
            return ex
        # Nothing reached the client yet: a replica that did no work passes the request on.
        err = refusal(ex)
        ex.end()
        log.info("%s refused %s: %s", node.name, req.model.public_id, err.code)
        if err.code in GONE:
            self._failed(req, node, "upstream_failed")
            self.fleet.refresh(node)
        if err.retry_after is None:
            err.retry_after = 1
        return err

    def _failed(self, req: Outbound, node: Node, code: str) -> None:
        self.metrics.errors.labels(req.model.public_id, node.name, code).inc()

    @staticmethod
    def _headers(req: Outbound) -> dict[str, str]:
        headers = dict(req.headers)  # (lower-cased, the ones not forwarded left out already)
        p = req.principal
        if p.entry is not None:  # anonymous callers share no per-account cap
            headers["X-Helexa-Account-Id"] = p.account_id
            headers["X-Helexa-Key-Id"] = p.key_id
        headers["Content-Type"] = "application/json"
        headers["X-Helexa-Routed"] = "1"
        if req.session is not None:  # (the neuron lists it in /health: where it lives)
            headers[recent_sessions.HEADER] = req.session.tag
        return headers


def _unreachable(req: Outbound, failure: ApiError) -> BadGateway:
    return BadGateway(f"could not reach a neuron for {req.model.public_id}: {failure.message}",
                      code="upstream_connection_error")


def check_context(model: ModelRef, body: dict[str, Any]) -> None:
    """Refuse a prompt the catalogue says is too long for the model, before routing."""
    entry = model.entry
    limit = entry.limit.context if entry and entry.limit else None
    if limit:
        est = estimate_prompt_tokens(body)
        if est > limit:
            raise BadRequest(f"the prompt is about {est} tokens and {entry.id} allows "
                             f"{limit}", code="context_length_exceeded", param="messages",
                             max=limit, estimated_prompt_tokens=est)
