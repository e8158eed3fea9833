"""`POST /v1/messages` and `/v1/messages/count_tokens` on the data plane, in Anthropic's shape.

Auth is `x-api-key` (what Anthropic's SDKs send) or a Bearer token; `anthropic-version`
and `anthropic-beta` are accepted and need nothing from us. Every error on these routes,
the prologue's included (a wrong method, a bad key, a spent cap), leaves in Anthropic's
envelope, not OpenAI's.
"""

from __future__ import annotations

import logging
from typing import Any

from cortex.core.errors import ApiError
from cortex.core.wire import SSE_HEADERS
from cortex.gateway import coldwait
from cortex.gateway.anthropic import errors, translate
from cortex.gateway.anthropic.stream import Converter
from cortex.gateway.budget import ask_for
from cortex.gateway.dataplane import Call, Dialect, Route
from cortex.gateway.neuron_calls import CHAT, count_on_loaded
from cortex.gateway.relay import streams
from cortex.gateway.relay.send import Exchange, read_json, refusal
from cortex.gateway.reply import Reply, json_reply

log = logging.getLogger(__name__)


def _render(exc: ApiError) -> tuple[int, dict[str, Any]]:
    return errors.status_of(exc), errors.envelope(exc)


ANTHROPIC = Dialect("anthropic", _render, x_api_key=True)


def messages(call: Call) -> Reply:
    req = translate.to_openai(call.body)
    model, thinking, stream = call.body["model"], req["enable_thinking"], bool(req.get("stream"))
    sent = call.send(CHAT, req, progress=stream)
    if not isinstance(sent, Exchange):  # a cold load under way: `ping` events until it is done
        conv = Converter(model, thinking=thinking, count=lambda: count_or_zero(call, req))
        return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS},
                     conv.events(coldwait.chunks_after_load(sent)))
    node = {"X-Cortex-Node": sent.node.name}
    if sent.status != 200:
        raise refusal(sent)
    if stream:
        conv = Converter(model, thinking=thinking, count=lambda: count_or_zero(call, req))
        return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS, **node},
                     conv.events(streams.chunks(sent)))
    _, reply = read_json(sent)
    return json_reply(200, translate.to_anthropic(reply, model, thinking=thinking), node)


def count_tokens(call: Call) -> Reply:
    """The prompt's size by the model's own tokenizer, on a node that has it loaded."""
    call.gw.auth.count_call(call.principal, call.environ.get("REMOTE_ADDR", ""))
    req = translate.to_openai(call.body, count_only=True)
    return json_reply(200, {"input_tokens": count_on_loaded(call, req)})


def count_or_zero(call: Call, req: dict[str, Any]) -> int:
    """The prompt's size on a loaded replica (after a cold load: the one just loaded)."""
    try:
        return count_on_loaded(call, req)
    except (ApiError, KeyError, ValueError) as exc:
        log.warning("could not count the prompt for message_start: %s", exc)
        return 0


ROUTES = [
    Route("/v1/messages", ANTHROPIC, messages,
          reserve=lambda body: ask_for(body, ("max_tokens",))),
    Route("/v1/messages/count_tokens", ANTHROPIC, count_tokens, reserve=lambda body: 0),
]
