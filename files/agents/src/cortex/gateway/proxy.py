"""Relaying OpenAI requests to a neuron, streaming or not, and accounting for them.

Bodies go through unchanged but for `model` (rewritten to the id the neuron knows). A
transport failure before the first byte, or a drained or stopping neuron, is retried once
on another replica (a neuron's 500 is the request's own doing: it goes back; a neuron that
had the request and timed out may still be running it: a 504); one that dies mid-stream
ends the client's stream with an explicit error event, never a clean end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cortex.core import fastjson
from cortex.core.errors import ApiError, BadRequest
from cortex.core.wire import SSE_HEADERS, sse_event
from cortex.gateway.auth import Hold, Principal
from cortex.gateway.config import ModelEntry
from cortex.gateway.http1 import HttpError
from cortex.gateway.http1 import Response as UpstreamResponse
from cortex.gateway.relay.sse import DONE, Reading, Scanner, billed, data_of, events
from cortex.gateway.reply import Closing, Reply
from cortex.gateway.router import Target
from cortex.gateway.upstream import UpstreamError

if TYPE_CHECKING:
    from cortex.gateway.composition import Gateway

log = logging.getLogger(__name__)

# Never forwarded either way (RFC 9110 7.6.1), nor what we set ourselves.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "content-length", "host",
              "authorization", "x-api-key", "x-helexa-account-id", "x-helexa-key-id",
              "x-helexa-routed"}
PASS_BACK = ("Content-Type", "Retry-After")
RETRY_CODES = {"node_drained", "shutting_down", "neuron_busy"}  # the neuron did no work
# A client that hangs up mid-stream: read on this long (bytes, seconds) for the usage chunk,
# so what the neuron generated is billed exactly; past it, the stream is cut (the neuron
# stops) and the prompt plus each relayed event is billed.
DRAIN_BYTES, DRAIN_S = 1 << 18, 2.0


@dataclass
class Outcome:
    """What one proxied request did, for metrics and spend; the tokens are what it is
    billed, set when it finishes."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_chunk_at: float | None = None
    status: int = 200
    code: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    reading: Reading = field(default_factory=Reading)  # what the neuron's answer said


def client_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The caller's end-to-end headers, read off the WSGI environ (werkzeug's header view
    costs more than the rest of the hop)."""
    out = {}
    names = _HEADER_NAMES
    for k, v in environ.items():
        name = names.get(k)
        if name is None:
            name = _header_name(k)
        if name:
            out[name] = v
    return out


# environ key -> the header's name to forward, "" for a key that is not one: one lookup a
# key instead of a prefix test, a replace, a lower() and a set test (3.5 -> 1.2 us for
# the openai SDK's headers under gunicorn). Bounded: the keys are what clients send.
_HEADER_NAMES: dict[str, str] = {}


def _header_name(key: str) -> str:
    name = ""
    if key.startswith("HTTP_"):
        name = key[5:].replace("_", "-").lower()
        if name in HOP_BY_HOP:
            name = ""
    if len(_HEADER_NAMES) < 1024:
        _HEADER_NAMES[key] = name
    return name


def estimate_prompt_tokens(body: dict) -> int:
    """A cheap upper-ish estimate (4 characters a token) to refuse oversize prompts early."""
    chars = 0
    for m in body.get("messages") or []:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            chars += len(c)
        elif isinstance(c, list):
            chars += sum(len(p["text"]) for p in c
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    for key in ("prompt", "input"):  # completions; embeddings
        value = body.get(key)
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            chars += sum(len(v) for v in value if isinstance(v, str))
    return chars // 4


@dataclass
class Exchange:
    """An open upstream response for a caller to consume; `finish` records metrics and spend."""

    target: Target
    response: UpstreamResponse
    outcome: Outcome
    finish: Callable[[], None]
    hold: Hold | None = None

    def usage_known(self) -> None:
        """The neuron said what the request used: the key's hold shrinks to it now, before
        the client can send its next request (the spend is stored after the reply)."""
        usage = self.outcome.reading.usage
        if self.hold is not None and usage is not None:
            self.hold.known(usage.total)


def forward(gw: Gateway, path: str, body: dict, principal: Principal,
            client_headers: dict[str, str], *, started: float, hold: Hold | None = None,
            on_done: Callable[[Outcome], None] | None = None,
            target: Target | None = None) -> Reply:
    """Relay `body` to a neuron and its answer back unchanged, streaming or not."""
    ex = open_exchange(gw, path, body, principal, client_headers, started=started,
                       hold=hold, on_done=on_done, target=target)
    node = {"X-Cortex-Node": ex.target.node.name}
    if body.get("stream") is True and ex.response.status == 200:
        # Of a stream, what the gateway adds is the work before the neuron gets the request.
        gw.metrics.overhead_of(path).observe(ex.outcome.extra["sent_s"])
        return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS, **node},
                     _relay(ex))
    data = fetch_body(ex)
    ex.outcome.reading.chunk(_json_reply(ex, data))
    ex.usage_known()
    # The gateway's own time: before the request went out, and since the reply came in.
    overhead = ex.outcome.extra["sent_s"] + time.monotonic() - ex.outcome.first_chunk_at

    def account() -> None:  # once the reply is on the wire: off the client's clock
        gw.metrics.overhead_of(path).observe(overhead)
        ex.finish()

    return Reply(ex.response.status, {**_pass_back(ex.response), **node,
                                      "Content-Length": str(len(data)),
                                      "X-Cortex-Overhead-Ms": f"{overhead * 1000:.2f}"},
                 Closing((data,), account))


def open_exchange(gw: Gateway, path: str, body: dict, principal: Principal,
                  client_headers: dict[str, str], *, started: float, hold: Hold | None = None,
                  on_done: Callable[[Outcome], None] | None = None,
                  target: Target | None = None) -> Exchange:
    """Route `body` (unless a `target` was routed already), send it, and return the
    neuron's response once its status is in."""
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("model: field required", code="missing_model_field", param="model")
    if target is None:
        check_context(gw.catalogue.resolve(name), name, body)  # before routing (a cold load)
        target = gw.router.route(name)
    headers = dict(client_headers)  # (lower-cased, hop-by-hop ones left out already)
    if principal.entry is not None:  # anonymous callers share no per-account cap
        headers["X-Helexa-Account-Id"] = principal.account_id
        headers["X-Helexa-Key-Id"] = principal.key_id
    headers["Content-Type"] = "application/json"
    headers["X-Helexa-Routed"] = "1"
    tried: set[str] = set()
    while True:
        payload = fastjson.dumps(dict(body, model=target.model_id))
        sent_at = time.monotonic()
        try:
            upstream = gw.upstream.open("POST", f"{target.node.endpoint}{path}", payload,
                                        headers)
        except UpstreamError as exc:
            if exc.timed_out:
                # The neuron has the request and may still be working on it: sending it
                # to another replica would run it twice and, on a slow fleet, pile load
                # onto the nodes that are keeping up.
                gw.metrics.errors.labels(target.public_id, target.node.name,
                                         "upstream_timeout").inc()
                raise ApiError(f"{target.node.name} gave no reply to the request within "
                               f"{gw.cfg.gateway.read_timeout_secs:g} s", status=504,
                               code="upstream_timeout", type="api_error") from None
            upstream = None
            failure = str(exc)
        else:
            failure = ""
            if upstream.status == 503:
                # A neuron's own 503 goes back as is (queue full...), but a drained or
                # stopping neuron did no work: another replica can take the request.
                code = _error_code(upstream)
                failure = f"{target.node.name} is {code}" if code in RETRY_CODES else ""
        if not failure:
            break
        # Nothing reached the client yet: try once more on another replica.
        gw.metrics.errors.labels(target.public_id, target.node.name, "upstream_failed").inc()
        if upstream is not None:
            upstream.close()
        tried.add(target.node.name)
        log.warning("%s failed before the first byte (%s)", target.node.name, failure)
        gw.fleet.refresh(target.node)
        try:
            if len(tried) > 1:
                raise ApiError("retry exhausted", code="upstream_connection_error")
            target = gw.router.route(name, exclude=tried)
        except ApiError:
            raise ApiError(f"could not reach a neuron for {name}: {failure}", status=502,
                           code="upstream_connection_error", type="api_error") from None
    gw.metrics.target(target.public_id, target.node.name).requests.inc()
    outcome = Outcome(status=upstream.status, extra={"sent_s": sent_at - started,
                                                     "answered": upstream.status == 200})
    return Exchange(target, upstream, outcome,
                    _finisher(gw, target, principal, outcome, started, hold, on_done,
                              lambda: estimate_prompt_tokens(body)), hold)


def read_body(ex: Exchange) -> bytes:
    """The whole (non-streaming) answer, whatever it is; accounts for it."""
    data = fetch_body(ex)
    ex.outcome.reading.chunk(fastjson.parse(data))
    ex.finish()
    return data


def read_json(ex: Exchange) -> dict[str, Any]:
    """The whole (non-streaming) answer as the neuron API's JSON object, parsed once (a 502
    if it is not); accounts for it."""
    body = _json_reply(ex, fetch_body(ex))
    ex.outcome.reading.chunk(body)
    ex.finish()
    return body


def fetch_body(ex: Exchange) -> bytes:
    """The whole (non-streaming) answer, not yet accounted for (but for a broken one)."""
    try:
        data = ex.response.read()  # the body, read now or earlier (_error_code)
    except HttpError as exc:
        ex.outcome.status, ex.outcome.code = 502, "upstream_read_error"
        ex.finish()
        raise ApiError(f"the neuron's reply broke off: {exc}", status=502, type="api_error",
                       code="upstream_read_error") from None
    ex.outcome.first_chunk_at = time.monotonic()
    return data


def _error_code(upstream: UpstreamResponse) -> str:
    """The code of a small JSON error reply, read in full (it is kept for the client)."""
    try:
        body = fastjson.loads(upstream.read())
        return body["error"]["code"]
    except (HttpError, ValueError, KeyError, TypeError):
        return ""


def check_context(entry: ModelEntry | None, name: str, body: dict) -> None:
    """Refuse a prompt the catalogue says is too long for the model, before routing."""
    limit = entry.limit.context if entry and entry.limit else None
    if limit:
        est = estimate_prompt_tokens(body)
        if est > limit:
            raise BadRequest(f"the prompt is about {est} tokens and {entry.id} allows "
                             f"{limit}", code="context_length_exceeded", param="messages",
                             max=limit, estimated_prompt_tokens=est)


def _pass_back(upstream: UpstreamResponse) -> dict[str, str]:
    return {name: upstream.headers[name.lower()] for name in PASS_BACK
            if name.lower() in upstream.headers}


def _json_reply(ex: Exchange, data: bytes) -> dict[str, Any]:
    """The neuron's whole reply as a JSON object; anything else (an HTML error page, a
    truncated or foreign body) is a 502 in the client's envelope, never relayed as is."""
    try:
        body = fastjson.loads(data)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    ex.outcome.status, ex.outcome.code = 502, "upstream_bad_reply"
    _finish_quietly(ex.finish)
    raise ApiError(f"{ex.target.node.name} answered HTTP {ex.response.status} with a body "
                   "that is not the neuron API's JSON", status=502, type="api_error",
                   code="upstream_bad_reply")


def _relay(ex: Exchange) -> Iterator[bytes]:
    """Yield the neuron's SSE bytes as they come, whole events only (a cut never relays
    half an event); note what they say; end with an error event if the stream breaks."""
    upstream, outcome = ex.response, ex.outcome
    scanner, reading = Scanner(), outcome.reading
    pieces = _raw(upstream, outcome)
    try:
        for piece in pieces:
            run = scanner.feed(piece)
            if run:
                _take(ex, reading, run)
                yield run
        if not reading.done:
            raise HttpError("the stream ended without [DONE]")
    except (HttpError, OSError) as exc:
        outcome.status, outcome.code = 502, "upstream_stream_error"
        log.warning("stream from upstream broke: %s", exc)
        err = ApiError(f"the neuron's stream broke off: {exc}", status=502, type="api_error",
                       code="upstream_stream_error")
        yield sse_event(err.body())
    except GeneratorExit:  # the client went away: still bill what the neuron generated
        outcome.code = "client_closed"
        _drain(pieces, scanner, reading)
        raise
    finally:
        upstream.release() if reading.done else upstream.close()
        _finish_quietly(ex.finish)


def _take(ex: Exchange, reading: Reading, run: bytes) -> None:
    """Note a run of whole events; once its usage is in, the hold shrinks to it before the
    client has the stream's end (and may send its next request)."""
    had_usage = reading.usage is not None
    reading.take(run)
    if not had_usage and reading.usage is not None:
        ex.usage_known()


def _drain(pieces: Iterator[bytes], scanner: Scanner, reading: Reading) -> None:
    """Read a little more of a stream nobody listens to (`pieces`: where the relay left
    off), for its usage; up to its end, DRAIN_BYTES or DRAIN_S, whichever comes first."""
    deadline, left = time.monotonic() + DRAIN_S, DRAIN_BYTES
    try:
        while not reading.done and left > 0 and time.monotonic() < deadline:
            piece = next(pieces, None)
            if piece is None:
                break
            left -= len(piece)
            reading.take(scanner.feed(piece))
    except (HttpError, OSError):
        pass


def _finish_quietly(finish: Callable[[], None]) -> None:
    # The reply is (or was meant to be) complete: a store or metrics error must not cut the
    # client's body (an unterminated chunked reply), only be logged.
    try:
        finish()
    except Exception:
        log.exception("accounting for a finished stream failed")


def iter_chunks(ex: Exchange) -> Iterator[dict[str, Any] | None]:
    """The neuron's SSE chunks, parsed, for a caller that re-shapes them; None stands for a
    keep-alive. A broken stream raises ApiError (502); spend is recorded at the end, also
    when the caller stops early (the client hung up)."""
    scanner, reading = Scanner(), ex.outcome.reading
    pieces = _raw(ex.response, ex.outcome)
    try:
        for piece in pieces:
            run = scanner.feed(piece)
            for event in events(run) if run else ():
                data = data_of(event)
                if data is None:
                    yield None
                elif data == DONE:
                    reading.done = True
                else:
                    chunk = fastjson.loads(data)
                    had_usage = reading.usage is not None
                    reading.chunk(chunk)
                    if not had_usage and reading.usage is not None:
                        ex.usage_known()
                    yield chunk
        if not reading.done:
            raise HttpError("the stream ended without [DONE]")
    except (HttpError, OSError, ValueError) as exc:
        ex.outcome.status, ex.outcome.code = 502, "upstream_stream_error"
        log.warning("stream from upstream broke: %s", exc)
        raise ApiError(f"the neuron's stream broke off: {exc}", status=502, type="api_error",
                       code="upstream_stream_error") from None
    except GeneratorExit:  # the client went away: still bill what the neuron generated
        ex.outcome.code = "client_closed"
        _drain(pieces, scanner, reading)
        raise
    finally:
        ex.response.release() if reading.done else ex.response.close()
        _finish_quietly(ex.finish)


def _raw(upstream: UpstreamResponse, outcome: Outcome) -> Iterator[bytes]:
    for chunk in upstream.stream():
        if chunk:
            if outcome.first_chunk_at is None:
                outcome.first_chunk_at = time.monotonic()
            yield chunk


def _finisher(gw: Gateway, target: Target, p: Principal, outcome: Outcome, started: float,
              hold: Hold | None, on_done: Callable[[Outcome], None] | None,
              prompt_estimate: Callable[[], int]) -> Callable[[], None]:
    def finish() -> None:
        reading = outcome.reading
        bill = billed(reading, outcome.extra["answered"], prompt_estimate)
        outcome.prompt_tokens, outcome.completion_tokens = bill.prompt_tokens, \
            bill.completion_tokens
        if reading.error is not None and outcome.status < 400:  # the neuron gave up
            outcome.status, outcome.code = 500, reading.error
        tm = gw.metrics.target(target.public_id, target.node.name)
        now = time.monotonic()
        tm.duration.observe(now - started)
        if outcome.first_chunk_at is not None:
            tm.ttft.observe(outcome.first_chunk_at - started)
            decode = now - outcome.first_chunk_at
            if outcome.completion_tokens > 1 and decode > 0:
                tm.tok_s.observe(outcome.completion_tokens / decode)
        if outcome.status >= 400:
            gw.metrics.errors.labels(target.public_id, target.node.name,
                                     outcome.code or str(outcome.status)).inc()
        total = outcome.prompt_tokens + outcome.completion_tokens
        if total:
            tm.prompt_tokens.inc(outcome.prompt_tokens)
            tm.completion_tokens.inc(outcome.completion_tokens)
            km = gw.metrics.key(p.account_id, p.key_id)
            km.spend.inc(total)
            km.prompt.inc(outcome.prompt_tokens)
            km.completion.inc(outcome.completion_tokens)
        if hold is not None:
            hold.settle(total)
        else:
            gw.auth.record(p, total)
        gw.recent.record(target.public_id, target.node.name, p.key_id, outcome, started, now)
        if on_done is not None:
            on_done(outcome)

    return finish
