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
from cortex.gateway import coldwait, proxy
from cortex.gateway.anthropic import errors, translate
from cortex.gateway.anthropic.stream import Converter
from cortex.gateway.budget import ask_for
from cortex.gateway.composition import Gateway
from cortex.gateway.dataplane import Call, Dialect, Route
from cortex.gateway.neuron_calls import count_on_loaded, refusal
from cortex.gateway.reply import Reply, json_reply
from cortex.gateway.router import Target

log = logging.getLogger(__name__)
CHAT = "/v1/chat/completions"


def _render(exc: ApiError) -> tuple[int, dict[str, Any]]:
    return errors.status_of(exc), errors.envelope(exc)


ANTHROPIC = Dialect("anthropic", _render, x_api_key=True)


def messages(call: Call) -> Reply:
    gw, body = call.gw, call.body
    req = translate.to_openai(body)
    model, thinking = body["model"], req["enable_thinking"]

    def open_(target: Target | None) -> proxy.Exchange:
        return proxy.open_exchange(gw, CHAT, req, call.principal, call.headers,
                                   started=call.started, hold=call.hold, target=target)

    target = None
    if req.get("stream"):
        target, waits = coldwait.route_or_wait(gw, req)
        if waits is not None:  # a cold load under way: `ping` events until it is done
            conv = Converter(model, thinking=thinking,
                             count=lambda: count_or_zero(gw, model, req))
            return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS},
                         conv.events(coldwait.chunks_after_load(waits, open_)))
    ex = open_(target)
    node = {"X-Cortex-Node": ex.target.node.name}
    if ex.response.status != 200:
        raise refusal(ex)
    if req.get("stream"):
        conv = Converter(model, thinking=thinking,
                         count=lambda: count_or_zero(gw, model, req))
        return Reply(200, {"Content-Type": "text/event-stream", **SSE_HEADERS, **node},
                     conv.events(proxy.iter_chunks(ex)))
    reply = proxy.read_json(ex)
    return json_reply(200, translate.to_anthropic(reply, model, thinking=thinking), node)


def count_tokens(call: Call) -> Reply:
    """The prompt's size by the model's own tokenizer, on a node that has it loaded."""
    call.gw.auth.count_call(call.principal, call.environ.get("REMOTE_ADDR", ""))
    req = translate.to_openai(call.body, count_only=True)
    return json_reply(200, {"input_tokens": count_on_loaded(call.gw, call.model, req)})


def count_or_zero(gw: Gateway, model: str, req: dict[str, Any]) -> int:
    """The prompt's size on a loaded replica (after a cold load: the one just loaded)."""
    try:
        return count_on_loaded(gw, model, req)
    except (ApiError, KeyError, ValueError) as exc:
        log.warning("could not count the prompt for message_start: %s", exc)
        return 0


ROUTES = [
    Route("/v1/messages", ANTHROPIC, messages,
          reserve=lambda body: ask_for(body, ("max_tokens",))),
    Route("/v1/messages/count_tokens", ANTHROPIC, count_tokens, reserve=lambda body: 0),
]
