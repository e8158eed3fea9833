"""The OpenAI routes of the data plane: relayed to a neuron as they are (but for `model`).

A stream whose model is being cold-loaded commits to 200 at once and hears the load's
progress as SSE comments until the neuron's own stream follows.

`response_format` (structured output) goes through unchanged: the neuron constrains its
decoding to it. Embeddings are routed like chat and billed by their prompt tokens.
"""

from __future__ import annotations

from typing import Any

from cortex.core.errors import ApiError
from cortex.core.wire import SSE_HEADERS
from cortex.gateway import coldwait, proxy
from cortex.gateway.budget import ask_for
from cortex.gateway.dataplane import Call, Dialect, Route
from cortex.gateway.reply import Reply
from cortex.gateway.router import Target


def _render(exc: ApiError) -> tuple[int, dict[str, Any]]:
    return exc.status, exc.body()


OPENAI = Dialect("openai", _render)


def relay(call: Call) -> Reply:
    target = None
    if call.body.get("stream") is True:
        target, waits = coldwait.route_or_wait(call.gw, call.body)
        if waits is not None:  # a cold load under way: SSE comments say how it goes
            return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS},
                         coldwait.relay_after_load(waits, lambda t: _forward(call, t)))
    return _forward(call, target)


def _forward(call: Call, target: Target | None) -> Reply:
    return proxy.forward(call.gw, call.path, call.body, call.principal, call.headers,
                         started=call.started, hold=call.hold, target=target)


ROUTES = [
    Route("/v1/chat/completions", OPENAI, relay),
    Route("/v1/completions", OPENAI, relay, reserve=lambda body: ask_for(body, ("max_tokens",))),
    # Nothing is generated: the hold is the input alone (token arrays included).
    Route("/v1/embeddings", OPENAI, relay, reserve=lambda body: ask_for(body, ())),
]
