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
from collections import deque
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
    """What one proxied request did, for metrics and spend."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_chunk_at: float | None = None
    status: int = 200
    code: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


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
        if self.hold is not None:
            self.hold.known(self.outcome.prompt_tokens + self.outcome.completion_tokens)


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
    _account_parsed(_json_reply(ex, data), ex.outcome)
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
    outcome = Outcome(status=upstream.status, extra={"sent_s": sent_at - started})
    return Exchange(target, upstream, outcome,
                    _finisher(gw, target, principal, outcome, started, hold, on_done), hold)


def read_body(ex: Exchange) -> bytes:
    """The whole (non-streaming) answer, whatever it is; accounts for it."""
    data = fetch_body(ex)
    _account_body(data, ex.outcome)
    ex.finish()
    return data


def read_json(ex: Exchange) -> dict[str, Any]:
    """The whole (non-streaming) answer as the neuron API's JSON object, parsed once (a 502
    if it is not); accounts for it."""
    body = _json_reply(ex, fetch_body(ex))
    _account_parsed(body, ex.outcome)
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


def _account_body(data: bytes, outcome: Outcome) -> None:
    try:
        body = fastjson.loads(data)
    except ValueError:
        return
    _account_parsed(body, outcome)


def _account_parsed(body: Any, outcome: Outcome) -> None:
    usage = body.get("usage") if isinstance(body, dict) else None
    if usage:
        outcome.prompt_tokens = usage.get("prompt_tokens", 0)
        outcome.completion_tokens = usage.get("completion_tokens", 0)
    if isinstance(body, dict) and "error" in body:
        err = body["error"]
        outcome.code = err.get("code") or err.get("kind") or "upstream_error"


def _relay(ex: Exchange) -> Iterator[bytes]:
    """Yield the neuron's SSE bytes as they come; note usage; end with an error if cut."""
    upstream, outcome = ex.response, ex.outcome
    recent: deque[bytes] = deque(maxlen=3)  # the usage chunk comes just before [DONE]
    edge = b""  # the last bytes seen, for a marker split across reads
    done = accounted = False
    first = b""
    events = 0  # relayed: a floor on the tokens generated, if the usage never comes
    pieces = _raw(upstream, outcome)
    held = b""  # the start of an event not yet whole: a cut never relays half an event
    try:
        for piece in pieces:
            chunk = held + piece if held else piece
            end = chunk.rfind(b"\n\n") + 2
            if end < 2:
                held = chunk
                continue
            if end < len(chunk):
                chunk, held = chunk[:end], chunk[end:]
            else:
                held = b""
            if not first and b"data: " in chunk:  # (a queued neuron's comments come first)
                first = chunk
            recent.append(chunk)
            events += chunk.count(b"data: ")
            window = edge + chunk  # only new bytes are searched, not the whole stream
            edge = window[-11:]
            if not done and b"data: [DONE]" in window:
                done = True  # the usage is in: account for it before the client has the end
                _account_stream_tail(b"".join(recent)[-8192:], outcome)
                ex.usage_known()
                accounted = True
            yield chunk
        if not done:
            raise HttpError("the stream ended without [DONE]")
    except (HttpError, OSError) as exc:
        outcome.status, outcome.code = 502, "upstream_stream_error"
        log.warning("stream from upstream broke: %s", exc)
        err = ApiError(f"the neuron's stream broke off: {exc}", status=502, type="api_error",
                       code="upstream_stream_error")
        yield sse_event(err.body())
    except GeneratorExit:  # the client went away: still bill what the neuron generated
        outcome.code = "client_closed"
        if not done:  # (gone just as the end went out: nothing more to read)
            done = _drain(pieces, recent, edge)
        if not done:
            _estimate_usage(first, events - 1, outcome)  # the first event is the role
        raise
    finally:
        upstream.release() if done else upstream.close()
        if not accounted:  # cut off, or drained after the client left
            _account_stream_tail(b"".join(recent)[-8192:], outcome)
        _finish_quietly(ex.finish)


def _drain(pieces: Iterator[bytes], recent: deque[bytes], edge: bytes) -> bool:
    """Read a little more of a stream nobody listens to (`pieces`: where the relay left
    off), for its usage chunk; True if its end ([DONE]) came within DRAIN_BYTES, DRAIN_S."""
    deadline, left = time.monotonic() + DRAIN_S, DRAIN_BYTES
    try:
        for chunk in pieces:
            recent.append(chunk)
            window = edge + chunk
            if b"data: [DONE]" in window:
                return True
            edge = window[-11:]
            left -= len(chunk)
            if left <= 0 or time.monotonic() > deadline:
                break
    except (HttpError, OSError):
        pass
    return False


def _estimate_usage(first: bytes, events: int, outcome: Outcome) -> None:
    """For a stream cut short of its usage chunk: the prompt's size from the neuron's first
    chunk, and each content event relayed counted as at least one token."""
    at = first.find(b'"helexa_prompt_tokens":')
    if at >= 0:
        digits = first[at + 23: at + 33].split(b",")[0].split(b"}")[0].strip()
        if digits.isdigit():
            outcome.prompt_tokens = int(digits)
    outcome.completion_tokens = max(outcome.completion_tokens, events)


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
    done = False
    buf = b""
    events = 0
    pieces = _raw(ex.response, ex.outcome)
    try:
        for raw in pieces:
            *lines, buf = (buf + raw).split(b"\n")
            for line in lines:
                if line.startswith(b":"):
                    yield None
                elif line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: "):
                    chunk = fastjson.loads(line[6:])
                    _account_chunk(chunk, ex.outcome)
                    if isinstance(chunk, dict) and chunk.get("usage"):
                        ex.usage_known()
                    if isinstance(chunk, dict):
                        events += 1
                        if events == 1 and isinstance(chunk.get("helexa_prompt_tokens"), int):
                            ex.outcome.prompt_tokens = chunk["helexa_prompt_tokens"]
                    yield chunk
        if not done:
            raise HttpError("the stream ended without [DONE]")
    except (HttpError, OSError, ValueError) as exc:
        ex.outcome.status, ex.outcome.code = 502, "upstream_stream_error"
        log.warning("stream from upstream broke: %s", exc)
        raise ApiError(f"the neuron's stream broke off: {exc}", status=502, type="api_error",
                       code="upstream_stream_error") from None
    except GeneratorExit:  # the client went away: still bill what the neuron generated
        ex.outcome.code = "client_closed"
        tail: deque[bytes] = deque([buf], maxlen=3)
        done = _drain(pieces, tail, buf[-11:])
        if done:
            _account_stream_tail(b"".join(tail)[-8192:], ex.outcome)
        else:
            ex.outcome.completion_tokens = max(ex.outcome.completion_tokens, events - 1)
        raise
    finally:
        ex.response.release() if done else ex.response.close()
        _finish_quietly(ex.finish)


def _raw(upstream: UpstreamResponse, outcome: Outcome) -> Iterator[bytes]:
    for chunk in upstream.stream():
        if chunk:
            if outcome.first_chunk_at is None:
                outcome.first_chunk_at = time.monotonic()
            yield chunk


def _account_chunk(chunk: Any, outcome: Outcome) -> None:
    if not isinstance(chunk, dict):
        return
    if chunk.get("usage"):
        outcome.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
        outcome.completion_tokens = chunk["usage"].get("completion_tokens", 0)
    if isinstance(chunk.get("error"), dict):  # the neuron gave up mid-stream (it said why)
        err = chunk["error"]
        outcome.status = 500
        outcome.code = err.get("code") or err.get("kind") or "upstream_error"


def _account_stream_tail(tail: bytes, outcome: Outcome) -> None:
    at = tail.rfind(b'"usage"')
    if at < 0:
        return
    start = tail.rfind(b"data: ", 0, at)
    end = tail.find(b"\n", at)
    try:
        chunk = fastjson.loads(tail[start + 6: end if end > 0 else None])
    except ValueError:
        return
    usage = chunk.get("usage") or {}
    outcome.prompt_tokens = usage.get("prompt_tokens", 0)
    outcome.completion_tokens = usage.get("completion_tokens", 0)


def _finisher(gw: Gateway, target: Target, p: Principal, outcome: Outcome, started: float,
              hold: Hold | None,
              on_done: Callable[[Outcome], None] | None) -> Callable[[], None]:
    def finish() -> None:
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
