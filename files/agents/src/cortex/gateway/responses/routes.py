"""`POST /v1/responses` on the data plane: the Responses API, stateless, as a chat completion.

The route only: the translation (`translate`, `reply`, `stream`) is pure functions of data.
Auth is a Bearer token (what the OpenAI SDK and Codex send). Every error on these routes,
the prologue's included, leaves in OpenAI's envelope as the Responses API words it, and
once a stream has begun, as `response.failed`.
"""

from __future__ import annotations

from typing import Any

from cortex.core.errors import ApiError
from cortex.core.wire import SSE_HEADERS
from cortex.gateway import coldwait
from cortex.gateway.budget import ask_for
from cortex.gateway.dataplane import Call, Dialect, Route
from cortex.gateway.neuron_calls import CHAT, count_on_loaded
from cortex.gateway.relay import streams
from cortex.gateway.relay.send import Exchange, read_json, refusal
from cortex.gateway.reply import Reply, json_reply
from cortex.gateway.responses import errors, reply, translate
from cortex.gateway.responses.stream import Converter


def _render(exc: ApiError) -> tuple[int, dict[str, Any]]:
    return errors.status_of(exc), errors.envelope(exc)


RESPONSES = Dialect("responses", _render)


def create(call: Call) -> Reply:
    plan = translate.to_chat(call.body)
    sent = call.send(CHAT, plan.chat, progress=plan.stream)
    if not isinstance(sent, Exchange):  # a cold load under way: `response.in_progress` ticks
        return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS},
                     Converter(plan).events(coldwait.chunks_after_load(sent)))
    node = {"X-Cortex-Node": sent.node.name}
    if sent.status != 200:
        raise refusal(sent, keep_param=True)
    if plan.stream:
        return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS, **node},
                     Converter(plan).events(streams.chunks(sent)))
    _, completion = read_json(sent)
    return json_reply(200, reply.to_response(completion, plan), node)


def input_tokens(call: Call) -> Reply:
    """The prompt's size by the model's own template and tokenizer, on a loaded replica
    (a count never loads or evicts a model)."""
    call.gw.auth.count_call(call.principal, call.environ.get("REMOTE_ADDR", ""))
    chat = translate.to_chat(call.body).chat
    return json_reply(200, {"object": "response.input_tokens",
                            "input_tokens": count_on_loaded(call, chat)})


ROUTES = [
    Route("/v1/responses", RESPONSES, create,
          reserve=lambda body: ask_for(body, ("max_output_tokens",))),
    Route("/v1/responses/input_tokens", RESPONSES, input_tokens, reserve=lambda body: 0),
]
