"""What a stream waiting on a cold load hears, in each dialect, until the neuron answers.

The relay's dispatch yields `Waiting` ticks while a cold load runs (relay/coldload.py) and
then the neuron's answer (`Exchange`); the routes have already sent a 200 stream's head.
The OpenAI routes turn each tick into an SSE comment line (`relay_after_load`); the
converters (Anthropic, Responses) get a `{PROGRESS: ...}` chunk for each
(`chunks_after_load`) and turn it into their dialect's keep-alive (`ping`,
`response.in_progress`). A load or a send that fails ends the stream with an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from cortex.core.errors import ApiError
from cortex.core.wire import sse_event
from cortex.gateway.relay import streams
from cortex.gateway.relay.coldload import Waiting
from cortex.gateway.relay.send import Exchange, refusal
from cortex.gateway.reply import Reply

PROGRESS = "helexa_progress"  # the key of a progress chunk, for the dialects' converters


def comment(w: Waiting) -> bytes:
    """An SSE comment line (OpenAI streams): clients skip it, proxies see traffic."""
    text = f"loading {w.model}: {w.phase}"
    if w.fraction is not None:
        text += f" {w.fraction * 100:.0f}%"
    if w.eta_secs is not None:
        text += f", about {w.eta_secs:.0f} s left"
    return f": {text}\n\n".encode()


def chunks_after_load(waits: Iterator[Waiting | Exchange]
                      ) -> Iterator[dict[str, Any] | None]:
    """For a converter (Anthropic, Responses): a `{PROGRESS: ...}` chunk each tick while
    the load runs, then the neuron's chunks. A load that fails, or a neuron that refuses,
    raises ApiError: the converter ends the stream with its dialect's error event."""
    for w in waits:
        if isinstance(w, Exchange):
            if w.status != 200:
                raise refusal(w)
            yield from streams.chunks(w)
            return
        yield {PROGRESS: w.describe()}


def relay_after_load(waits: Iterator[Waiting | Exchange],
                     answer: Callable[[Exchange], Reply]) -> Iterator[bytes]:
    """For the OpenAI routes: an SSE comment each tick while the load runs, then the
    neuron's stream as `answer` relays it; a failure is an error event."""
    try:
        for w in waits:
            if isinstance(w, Exchange):
                reply = answer(w)
                break
            yield comment(w)
        else:  # the wait ends with an Exchange or an error, never empty
            raise ApiError("the cold load ended without an answer", code="internal_error")
    except ApiError as exc:
        yield sse_event(exc.body())
        return
    body = [reply.body] if isinstance(reply.body, bytes) else reply.body
    if reply.status == 200:
        yield from body
        return
    try:  # the neuron's refusal (context too long...), as an event
        refused = json.loads(b"".join(body))
    except ValueError:
        refused = {"error": {"message": f"HTTP {reply.status}", "code": "upstream_error"}}
    yield sse_event(refused)
