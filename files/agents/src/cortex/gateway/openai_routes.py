"""The OpenAI routes of the data plane: relayed to a neuron as they are (but for `model`).

A stream whose model is being cold-loaded commits to 200 at once and hears the load's
progress as SSE comments until the neuron's own stream follows.

`response_format` (structured output) goes through unchanged: the neuron constrains its
decoding to it. Embeddings are routed like chat and billed by their prompt tokens.
"""

from __future__ import annotations

import time
from typing import Any

from cortex.core.errors import ApiError
from cortex.core.wire import SSE_HEADERS
from cortex.gateway import coldwait
from cortex.gateway.budget import ask_for
from cortex.gateway.dataplane import Call, Dialect, Route
from cortex.gateway.relay import streams
from cortex.gateway.relay.send import Exchange, read_json
from cortex.gateway.reply import Reply


def _render(exc: ApiError) -> tuple[int, dict[str, Any]]:
    return exc.status, exc.body()


OPENAI = Dialect("openai", _render)


def relay(call: Call) -> Reply:
    """The neuron's answer, as it is: a stream relayed event by event, or the whole reply
    (its own status: a neuron's refusal goes back as the neuron wrote it)."""
    stream = call.body.get("stream") is True
    sent = call.send(call.path, call.body, progress=stream)
    if not isinstance(sent, Exchange):  # a cold load under way: SSE comments say how it goes
        return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS},
                     coldwait.relay_after_load(sent, lambda ex: _answer(call, ex)))
    return _answer(call, sent)


def _answer(call: Call, ex: Exchange) -> Reply:
    node = {"X-Cortex-Node": ex.node.name}
    if call.body.get("stream") is True and ex.status == 200:
        # Of a stream, what the gateway adds is the work before the neuron gets the request.
        call.tab.overhead = ex.sent_s
        return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS, **node},
                     streams.relay(ex))
    data, _ = read_json(ex)
    # The gateway's own time: before the request went out, and since the reply came in.
    overhead = call.tab.overhead = ex.sent_s + time.monotonic() - ex.first_chunk_at
    return Reply(ex.status, {**ex.pass_back(), **node, "Content-Length": str(len(data)),
                             "X-Cortex-Overhead-Ms": f"{overhead * 1000:.2f}"}, data)


ROUTES = [
    Route("/v1/chat/completions", OPENAI, relay),
    Route("/v1/completions", OPENAI, relay, reserve=lambda body: ask_for(body, ("max_tokens",))),
    # Nothing is generated: the hold is the input alone (token arrays included).
    Route("/v1/embeddings", OPENAI, relay, reserve=lambda body: ask_for(body, ())),
]
