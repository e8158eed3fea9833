"""OpenAI chat chunks → Anthropic's streaming events.

Anthropic streams typed content blocks, each opened, filled and closed under its own
index; OpenAI streams one delta at a time. The converter keeps one block open and starts
the next (with the next index) when the kind of delta changes: thinking, text, or a new
tool call. `message_start` must come first and carry the prompt's size: the neuron puts
it on its first chunk (`helexa_prompt_tokens`); an older neuron is asked via `count`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from cortex.core.errors import ApiError, BadGateway
from cortex.core.wire import sse_event
from cortex.gateway.anthropic import errors, translate

PROGRESS = "helexa_progress"  # a cold load's tick (the gateway's coldwait)

log = logging.getLogger(__name__)


class Converter:
    def __init__(self, model: str, *, thinking: bool, count: Callable[[], int]) -> None:
        self.model = model
        self.thinking = thinking  # show reasoning as thinking blocks (only when asked for)
        self.count = count
        self.index = -1  # of the open block, or of the last one closed
        self.open: str | None = None  # "text" | "thinking" | "tool_use"
        self.tools: dict[int, int] = {}  # OpenAI tool_calls index → block index
        self.space = ""  # trailing whitespace of the text so far, held back
        self.started = False
        self.input_tokens = 0  # the whole prompt; the Anthropic usage splits off the cached
        self.cached_tokens = 0
        self.output_tokens = 0
        self.finish: str | None = None
        self.matched: str | None = None

    def events(self, chunks: Iterator[dict[str, Any] | None]) -> Iterator[bytes]:
        """Anthropic SSE bytes for the upstream chunks (None in them means keep-alive; a
        `helexa_progress` chunk, a tick of a cold load the request waits on)."""
        try:
            for chunk in chunks:
                if chunk is None or PROGRESS in chunk:  # a keep-alive; a cold load's tick
                    if self.started or chunk is not None:
                        yield _event("ping", {"type": "ping"})
                    continue
                if isinstance(chunk.get("error"), dict):  # the neuron gave up and said why
                    yield from self._error(_upstream_error(chunk["error"]))
                    return
                if not self.started:
                    yield from self._start(chunk)
                yield from self._chunk(chunk)
            yield from self._end()
        except ApiError as exc:
            yield from self._error(exc)
        except Exception:  # the client must learn that the answer is cut, whatever broke
            log.exception("converting the stream to Anthropic events failed")
            yield from self._error(ApiError("internal error while streaming",
                                            code="internal_error"))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:  # a client that went away frees the neuron's slot
                close()

    # -- stages --------------------------------------------------------------------------
    def _start(self, chunk: dict[str, Any]) -> Iterator[bytes]:
        self.started = True
        tokens = chunk.get("helexa_prompt_tokens")
        if tokens is None:
            tokens = (chunk.get("usage") or {}).get("prompt_tokens")
        self.input_tokens = tokens if isinstance(tokens, int) else self.count()
        cached = chunk.get("helexa_cached_tokens")  # a neuron that knows it at the start
        if isinstance(cached, int):
            self.cached_tokens = cached
        message = {"id": translate.message_id(), "type": "message", "role": "assistant",
                   "model": self.model, "content": [], "stop_reason": None,
                   "stop_sequence": None,
                   "usage": translate.usage(self.input_tokens, 0, self.cached_tokens)}
        yield _event("message_start", {"type": "message_start", "message": message})
        yield _event("ping", {"type": "ping"})

    def _chunk(self, chunk: dict[str, Any]) -> Iterator[bytes]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.output_tokens = usage.get("completion_tokens", self.output_tokens)
            self.input_tokens = usage.get("prompt_tokens", self.input_tokens)
            self.cached_tokens = translate.cached_tokens(usage) or self.cached_tokens
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content") and self.thinking:
                yield from self._thinking(delta["reasoning_content"])
            if delta.get("content"):
                yield from self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                yield from self._tool(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                self.matched = choice.get("stop_reason")

    def _end(self) -> Iterator[bytes]:
        if not self.started:
            raise BadGateway("the neuron's stream ended before it began",
                             code="upstream_stream_error")
        if self.open == "text" and self.space:  # the answer's own end, e.g. before a stop
            yield self._delta({"type": "text_delta", "text": self.space})
        yield from self._close()
        reason, sequence = translate.stop_reason(self.finish, self.matched)
        yield _event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": translate.usage(self.input_tokens, self.output_tokens, self.cached_tokens)})
        yield _event("message_stop", {"type": "message_stop"})

    def _error(self, exc: ApiError) -> Iterator[bytes]:
        # Mid-stream there is no status to set: Anthropic sends an `error` event and stops.
        yield _event("error", errors.envelope(exc))

    # -- blocks --------------------------------------------------------------------------
    def _thinking(self, text: str) -> Iterator[bytes]:
        if self.open != "thinking":
            yield from self._begin("thinking", {"type": "thinking", "thinking": "",
                                                "signature": ""})
        yield self._delta({"type": "thinking_delta", "thinking": text})

    def _text(self, text: str) -> Iterator[bytes]:
        # Whitespace is held until text follows it: models put newlines before and between
        # tool calls, which would otherwise end a text block or make one of their own.
        text, self.space = self.space + text, ""
        body = text.rstrip()
        self.space = text[len(body):]
        if not body:
            return
        if self.open != "text":
            yield from self._begin("text", {"type": "text", "text": ""})
        yield self._delta({"type": "text_delta", "text": body})

    def _tool(self, call: dict[str, Any]) -> Iterator[bytes]:
        at = call.get("index", 0)
        fn = call.get("function") or {}
        if call.get("id") or at not in self.tools:
            yield from self._begin("tool_use", {
                "type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": fn.get("name", ""), "input": {}})
            self.tools[at] = self.index
        args = fn.get("arguments")
        if isinstance(args, dict):
            args = json.dumps(args)
        if args and self.tools[at] == self.index and self.open == "tool_use":
            yield self._delta({"type": "input_json_delta", "partial_json": args})
        elif args:  # Anthropic cannot reopen a closed block: such a late fragment is lost
            log.warning("dropping arguments for tool call %s after its block closed", at)

    def _begin(self, kind: str, block: dict[str, Any]) -> Iterator[bytes]:
        yield from self._close()
        self.index += 1
        self.open = kind
        yield _event("content_block_start", {"type": "content_block_start",
                                             "index": self.index, "content_block": block})

    def _close(self) -> Iterator[bytes]:
        self.space = ""
        if self.open is not None:
            self.open = None
            yield _event("content_block_stop", {"type": "content_block_stop",
                                                "index": self.index})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta",
                                              "index": self.index, "delta": delta})


def _event(name: str, data: dict[str, Any]) -> bytes:
    return sse_event(data, event=name)


def _upstream_error(err: dict[str, Any]) -> ApiError:
    # The neuron's in-stream errors: a queue that stayed full is an overload (503).
    code = err.get("code") or err.get("kind") or "upstream_error"
    status = 503 if code in ("rate_limit_exceeded", "shutting_down") else 500
    return ApiError(err.get("message") or err.get("detail") or code, code=code, status=status)
