"""The OpenAI routes of the data plane: relayed to a neuron as they are (but for `model`).

`response_format` (structured output) goes through unchanged: the neuron constrains its
decoding to it. Embeddings are routed like chat and billed by their prompt tokens.
"""

from __future__ import annotations

from typing import Any

from cortex.core.errors import ApiError
from cortex.gateway import proxy
from cortex.gateway.dataplane import Call, Dialect, Route
from cortex.gateway.reply import Reply


def _render(exc: ApiError) -> tuple[int, dict[str, Any]]:
    return exc.status, exc.body()


OPENAI = Dialect("openai", _render)


def relay(call: Call) -> Reply:
    return proxy.forward(call.gw, call.path, call.body, call.principal, call.headers,
                         started=call.started, hold=call.hold)


ROUTES = [
    Route("/v1/chat/completions", OPENAI, relay),
    Route("/v1/completions", OPENAI, relay),
    # Nothing is generated: the hold is the prompt alone.
    Route("/v1/embeddings", OPENAI, relay, reserve=proxy.estimate_prompt_tokens),
]
