"""Chat-completion chunks → the Responses API's streaming events.

A response streams output items (reasoning, message, function_call), each added, filled
by deltas and done, under its own `output_index`; every event carries an increasing
`sequence_number`. Codex builds its history only from `response.output_item.done`, so
each done event holds the whole item. The stream ends with exactly one terminal event:
`response.completed`, `response.incomplete` (cut at max_output_tokens) or
`response.failed` (the neuron gave up or died: never a clean-looking end). No `[DONE]`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from cortex.core.errors import ApiError, BadGateway
from cortex.gateway.responses import errors, reply
from cortex.gateway.responses.translate import Plan

PROGRESS = "helexa_progress"  # a cold load's tick (the gateway's coldwait)

log = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"


def sse(event: dict[str, Any]) -> bytes:
    """One event as SSE: its type as the event name, the JSON as data."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class Converter:
    """One response's events; `events` for SSE bytes, `dicts` for the events themselves."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.response = reply.shell(plan, reply.new_id("resp"), int(time.time()), "in_progress")
        self.seq = -1
        self.output: list[dict[str, Any]] = []  # the items done so far
        self.item: dict[str, Any] | None = None  # the open item
        self.text = ""  # the open item's text (message, reasoning) or arguments (call)
        self.calls: dict[int, str] = {}  # chat tool_calls index → call item id
        self.space = ""  # trailing whitespace of the message text so far, held back
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self.chunks = 0

    def events(self, chunks: Iterator[dict[str, Any] | None]) -> Iterator[bytes]:
        """SSE bytes for the upstream chunks (None among them means keep-alive)."""
        events = self.dicts(chunks)
        try:
            for event in events:
                yield KEEPALIVE if event is None else sse(event)
        finally:
            events.close()  # now, not when collected: it frees the neuron's slot

    def dicts(self, chunks: Iterator[dict[str, Any] | None]
              ) -> Iterator[dict[str, Any] | None]:
        try:
            yield self._lifecycle("response.created")
            yield self._lifecycle("response.in_progress")
            for chunk in chunks:
                if chunk is None:
                    yield None
                    continue
                if PROGRESS in chunk:  # a cold load's tick: the response is in progress
                    yield self._lifecycle("response.in_progress")
                    continue
                if isinstance(chunk.get("error"), dict):  # the neuron gave up and said why
                    yield self._failed(_upstream_error(chunk["error"]))
                    return
                self.chunks += 1
                yield from self._chunk(chunk)
            if not self.chunks:
                raise BadGateway("the neuron's stream ended before it began",
                             code="upstream_stream_error")
            yield from self._end()
        except ApiError as exc:
            yield self._failed(exc)
        except Exception:  # the client must learn that the answer is cut, whatever broke
            log.exception("converting the stream to Responses events failed")
            yield self._failed(ApiError("internal error while streaming",
                                        code="internal_error"))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:  # a client that went away frees the neuron's slot
                close()

    # -- stages --------------------------------------------------------------------------
    def _chunk(self, chunk: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                yield from self._reasoning(delta["reasoning_content"])
            if delta.get("content"):
                yield from self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                yield from self._call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def _end(self) -> Iterator[dict[str, Any]]:
        cut = self.finish == "length"
        if self.item is not None and self.item["type"] == "message" and self.space:
            yield self._text_delta(self.space)  # the answer's own end, e.g. before a stop
        yield from self._close("incomplete" if cut else "completed")
        response = dict(self.response, output=list(self.output),
                        usage=reply.usage(self.usage))
        reply.finish(response, self.finish)
        kind = "response.incomplete" if response["status"] == "incomplete" else \
            "response.completed"
        yield self._event(kind, response=response)

    def _failed(self, exc: ApiError) -> dict[str, Any]:
        output = list(self.output)
        if self.item is not None:  # what was under way, as far as it got
            output.append(self._whole("incomplete"))
        response = dict(self.response, status="failed", output=output,
                        error=errors.failure(exc),
                        usage=reply.usage(self.usage) if self.usage else None)
        return self._event("response.failed", response=response)

    # -- items ---------------------------------------------------------------------------
    def _reasoning(self, text: str) -> Iterator[dict[str, Any]]:
        if self.item is None or self.item["type"] != "reasoning":
            yield from self._open(reply.reasoning_item(reply.new_id("rs"), "", "in_progress"))
            yield self._part("response.content_part.added",
                             {"type": "reasoning_text", "text": ""})
        self.text += text
        yield self._event("response.reasoning_text.delta", **self._at(), content_index=0,
                          delta=text)

    def _text(self, text: str) -> Iterator[dict[str, Any]]:
        # Whitespace is held until text follows it: models put newlines before and between
        # tool calls, which would otherwise make a message of their own.
        text = self.space + text
        body = text.rstrip()
        if not body:
            self.space = text
            return
        if self.item is None or self.item["type"] != "message":
            yield from self._open(reply.message_item(reply.new_id("msg"), None, "in_progress"))
            yield self._part("response.content_part.added", reply.text_part(""))
        self.space = text[len(body):]
        yield self._text_delta(body)

    def _text_delta(self, text: str) -> dict[str, Any]:
        self.text += text
        return self._event("response.output_text.delta", **self._at(), content_index=0,
                           delta=text, logprobs=[])

    def _call(self, call: dict[str, Any]) -> Iterator[dict[str, Any]]:
        at = call.get("index", 0)
        fn = call.get("function") or {}
        if at not in self.calls or (call.get("id") and self.item is not None
                                    and self.item.get("call_id") != call["id"]):
            item = reply.call_item(reply.new_id("fc"), call.get("id") or reply.new_id("call"),
                                   fn.get("name", ""), "", self.plan.names, "in_progress")
            yield from self._open(item)
            self.calls[at] = item["id"]
        args = fn.get("arguments")
        if args is None or args == "":
            return
        args = reply.arguments_text(args)
        if self.item is not None and self.item["id"] == self.calls[at]:
            self.text += args
            yield self._event("response.function_call_arguments.delta", **self._at(),
                              delta=args)
        else:  # a closed item cannot take more: such a late fragment is lost
            log.warning("dropping arguments for tool call %s after its item closed", at)

    def _open(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield from self._close("completed")
        self.item, self.text = item, ""
        yield self._event("response.output_item.added", output_index=len(self.output),
                          item=item)

    def _close(self, status: str) -> Iterator[dict[str, Any]]:
        self.space = ""
        if self.item is None:
            return
        kind = self.item["type"]
        whole = self._whole(status)
        if kind == "message":
            yield self._event("response.output_text.done", **self._at(), content_index=0,
                              text=self.text, logprobs=[])
            yield self._part("response.content_part.done", whole["content"][0])
        elif kind == "reasoning":
            yield self._event("response.reasoning_text.done", **self._at(), content_index=0,
                              text=self.text)
            yield self._part("response.content_part.done", whole["content"][0])
        else:
            yield self._event("response.function_call_arguments.done", **self._at(),
                              arguments=whole["arguments"])
        yield self._event("response.output_item.done", output_index=len(self.output),
                          item=whole)
        self.output.append(whole)
        self.item, self.text = None, ""

    def _whole(self, status: str) -> dict[str, Any]:
        """The open item as it stands, complete with its text."""
        item = self.item or {}
        if item["type"] == "message":
            return reply.message_item(item["id"], self.text, status)
        if item["type"] == "reasoning":
            whole = reply.reasoning_item(item["id"], self.text, status)
            whole["content"] = [{"type": "reasoning_text", "text": self.text}]
            return whole
        return dict(item, arguments=self.text or "{}", status=status)

    # -- events --------------------------------------------------------------------------
    def _at(self) -> dict[str, Any]:
        return {"item_id": self.item["id"], "output_index": len(self.output)}

    def _part(self, kind: str, part: dict[str, Any]) -> dict[str, Any]:
        return self._event(kind, **self._at(), content_index=0, part=part)

    def _lifecycle(self, kind: str) -> dict[str, Any]:
        return self._event(kind, response=dict(self.response))

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq, **fields}


def _upstream_error(err: dict[str, Any]) -> ApiError:
    # The neuron's in-stream errors: a queue that stayed full is an overload (503).
    code = err.get("code") or err.get("kind") or "upstream_error"
    status = 503 if code in ("rate_limit_exceeded", "shutting_down") else 500
    return ApiError(err.get("message") or err.get("detail") or code, code=code, status=status)
