"""Waiting on a cold load with something to show for it.

`Router.route()` blocks for as long as a load takes: minutes for a big model, and a
client that hears nothing for that long gives up. `route_waiting` runs the same routing in
its own thread (a greenlet under gevent) and yields, every `tick` seconds while it runs,
what the neurons report of the load (the poller's cache: download bytes, then llama.cpp's
progress), and at the end the Target. Routing errors that come before the first tick
(unknown model, no healthy node) arrive first, so the caller can still answer them with a
plain 4xx/5xx; only once a `Waiting` comes does it need to commit to a 200 stream.

A caller that stops listening (its client went away) stops only its own wait: the load
goes on for the other requests waiting on it, as the router single-flights it.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cortex.core.errors import ApiError
from cortex.core.wire import sse_event
from cortex.gateway import proxy
from cortex.gateway.composition import Gateway
from cortex.gateway.neuron_calls import refusal
from cortex.gateway.router import Target

TICK_SECS = 1.0  # how often a waiting stream hears of the load
PROGRESS = "helexa_progress"  # the key of a progress chunk, for the dialects' converters


@dataclass
class Waiting:
    model: str  # what the client asked for, resolved through aliases
    node: str | None  # where it is loading, once a poll has seen it
    phase: str  # waiting (not seen on a neuron yet) | preparing | downloading | loading
    fraction: float | None
    eta_secs: float | None
    elapsed_secs: float

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "node": self.node, "phase": self.phase,
                "fraction": self.fraction, "eta_secs": self.eta_secs,
                "elapsed_secs": round(self.elapsed_secs, 1)}

    def comment(self) -> bytes:
        """An SSE comment line (OpenAI streams): clients skip it, proxies see traffic."""
        text = f"loading {self.model}: {self.phase}"
        if self.fraction is not None:
            text += f" {self.fraction * 100:.0f}%"
        if self.eta_secs is not None:
            text += f", about {self.eta_secs:.0f} s left"
        return f": {text}\n\n".encode()


def route_waiting(gw: Gateway, name: str, exclude: frozenset[str] | set[str] = frozenset(),
                  tick: float = 1.0) -> Iterator[Waiting | Target]:
    """Yield `Waiting` every `tick` s while `name` is being routed (a cold load), then its
    Target; routing errors are raised from the iterator."""
    entry = gw.catalogue.resolve(name)
    model_id = entry.load_id if entry else name
    public = entry.id if entry else name
    if any(n.name not in exclude for n in gw.fleet.replicas(model_id)):
        yield gw.router.route(name, set(exclude))  # loaded: no thread, no wait
        return
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:  # this thread outlives a caller that leaves: the caller is counted
        try:
            box["target"] = gw.router.route(name, set(exclude), counted=False)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    with gw.router.waiting_for(model_id):  # until served, or until the caller leaves
        threading.Thread(target=run, name=f"route:{public}", daemon=True).start()
        started = time.monotonic()
        while not done.wait(tick):
            yield progress_of(gw, model_id, public, started)
        if "error" in box:
            raise box["error"]
    yield box["target"]


def progress_of(gw: Gateway, model_id: str, public: str, started: float) -> Waiting:
    elapsed = time.monotonic() - started
    for node in gw.fleet.nodes.values():
        m = node.models.get(model_id)
        if m is not None and m.status == "loading":
            p = m.info.get("progress") or {}
            return Waiting(public, node.name, p.get("phase", "preparing"), p.get("fraction"),
                           p.get("eta_secs"), elapsed)
    return Waiting(public, None, "waiting", None, None, elapsed)


def route_or_wait(gw: Gateway, body: dict[str, Any]
                  ) -> tuple[Target | None, Iterator[Waiting | Target] | None]:
    """Route a streaming request: (its Target, None) when the model is served at once,
    else (None, the wait), once the first tick shows a load under way. Errors known
    before the first tick (too long a prompt, an unknown model) raise here, before the
    reply commits to a 200 stream."""
    name = body["model"]
    proxy.check_context(gw.catalogue.resolve(name), name, body)  # before any cold load
    waits = route_waiting(gw, name, tick=TICK_SECS)
    first = next(waits)
    if isinstance(first, Target):
        waits.close()
        return first, None
    return None, itertools.chain([first], waits)


def chunks_after_load(waits: Iterator[Waiting | Target],
                      open_: Callable[[Target], proxy.Exchange]
                      ) -> Iterator[dict[str, Any] | None]:
    """For a converter (Anthropic, Responses): a `{PROGRESS: ...}` chunk each tick while
    the load runs, then the chunks of the exchange `open_` starts on the target. A load
    that fails, or a neuron that refuses, raises ApiError: the converter ends the stream
    with its dialect's error event."""
    for w in waits:
        if isinstance(w, Target):
            ex = open_(w)
            if ex.response.status != 200:
                raise refusal(ex)
            yield from proxy.iter_chunks(ex)
            return
        yield {PROGRESS: w.describe()}


def relay_after_load(waits: Iterator[Waiting | Target],
                     forward: Callable[[Target], proxy.Reply]) -> Iterator[bytes]:
    """For the OpenAI routes: an SSE comment each tick while the load runs, then the
    neuron's stream as `forward` relays it from the target; a failure is an error event."""
    try:
        for w in waits:
            if isinstance(w, Target):
                reply = forward(w)
                break
            yield w.comment()
        else:  # the wait ends with a Target or an error, never empty
            raise ApiError("the cold load ended without a target", code="internal_error")
    except ApiError as exc:
        yield sse_event(exc.body())
        return
    body = reply.body if not isinstance(reply.body, bytes) else [reply.body]
    try:
        if reply.status == 200:
            yield from body
            return
        try:  # the neuron's refusal (queue full, context too long...), as an event
            refused = json.loads(b"".join(body))
        except ValueError:
            refused = {"error": {"message": f"HTTP {reply.status}", "code": "upstream_error"}}
        yield sse_event(refused)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()

