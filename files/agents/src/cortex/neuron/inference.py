"""Chat and text completions: admission, waiting on the model's scheduler, OpenAI replies.

The HTTP thread only submits a job and relays its events; a stream that the client
drops cancels the job at once so the model's slot is freed. Every tokenize or template
call here holds a lease on the model, so an unload never frees it under this thread.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cortex.core.errors import ApiError, BadRequest, Unavailable
from cortex.core.wire import sse_event
from cortex.neuron import chat as chatmod
from cortex.neuron import forced_tools, session_cache, structured
from cortex.neuron.families import Part, Tools
from cortex.neuron.jobs import Done, Job, Started, Text
from cortex.neuron.waiter import KeepAlive, Waiter

if TYPE_CHECKING:
    from cortex.neuron.chat import Prompt
    from cortex.neuron.composition import Neuron
    from cortex.neuron.registry import Loaded

log = logging.getLogger(__name__)

KEEPALIVE_SECS = 5.0  # a stream's comment line while nothing else is written

@dataclass(frozen=True)
class Caller:
    """Who sent a request, as the web layer read it from the request's headers."""

    principal: str = ""  # the account a gateway sent it for: the prompt cache's partition
    routed: bool = False  # a gateway routed it (refused while drained, so it goes elsewhere)
    session: str = ""  # the gateway's tag for its session (core.recent_sessions), if any
    # Whether the client has closed its side of the connection (the web layer peeks at the
    # socket); None where that cannot be known.
    hung_up: Callable[[], bool] | None = None


HUNG_UP_CHECK_SECS = 0.25  # how often a non-streaming request looks for a gone client


def model_to_serve(neuron: Neuron, body: dict, caller: Caller) -> Loaded:
    """The loaded model `body` names, if this neuron takes work now."""
    if neuron.registry.shutting_down:
        raise Unavailable("the neuron is shutting down", code="shutting_down", retry_after=15)
    if neuron.drained and caller.routed:
        # A gateway whose view is a poll old still sent one: refuse before any work, so it
        # retries on another replica. Direct callers (an operator's check) are served.
        raise Unavailable("this neuron is drained", code="node_drained", retry_after=1)
    return neuron.registry.find(body.get("model"))


def handle(neuron: Neuron, body: dict, caller: Caller, *, chat: bool
           ) -> dict[str, Any] | Iterator[bytes]:
    """A completion: its OpenAI body, or the bytes of its event stream."""
    loaded = model_to_serve(neuron, body, caller)
    stream = chatmod.stream_flag(body)
    grammar = structured.grammar_for(body)
    forced = chatmod.forced_tools(body) if chat else None
    if forced and grammar is not None:
        raise forced_tools.conflict()
    with loaded.lease(then_submit=True) as model:
        prompt = (chatmod.chat_prompt(body, model, loaded.family) if chat
                  else chatmod.completion_prompt(body, model))
        if forced:
            grammar = forced_tools.grammar_for(body, forced, model, prompt)
        elif grammar is not None:
            model.check_grammar(grammar)
    if not prompt.tokens:
        field = "messages" if chat else "prompt"
        raise BadRequest(f"'{field}' gives an empty prompt (no tokens): send some text",
                         code="empty_prompt", param=field)
    gen = chatmod.sampling(body, prompt_tokens=prompt.tokens, n_ctx=model.n_ctx,
                           max_prompt_tokens=neuron.cfg.max_prompt_tokens,
                           defaults=neuron.cfg.sampling)
    gen.grammar = grammar
    gen.cache_ttl = session_cache.requested_ttl(body)  # (Anthropic cache_control)
    stop = chatmod.stops(body)
    # A forced call ends where its grammar does: a stop string met inside the arguments
    # would cut the promised call in two.
    job = Job(request=gen, stop=[] if forced else stop,
              principal=caller.principal)
    endpoint = "chat" if chat else "completions"
    try:
        loaded.scheduler.submit(job)
    except ApiError as exc:
        neuron.metrics.requests.labels(loaded.id, endpoint, str(exc.status)).inc()
        raise
    loaded.sessions.served(caller.session)  # (gateways send its next turn here: /health)
    reply = ReplyBuilder(loaded, chat=chat, prompt=prompt, stream=stream)
    waiter = Waiter(loaded, job, neuron.cfg.admission.max_wait_secs)
    if stream:
        return _stream(neuron, reply, waiter, endpoint, caller.hung_up)
    try:
        summary = None
        watch = caller.hung_up
        check_at = time.monotonic() + HUNG_UP_CHECK_SECS
        for ev in waiter.events(keepalive=watch is not None, every=HUNG_UP_CHECK_SECS):
            if isinstance(ev, Text):
                reply.feed(ev.text)
            elif isinstance(ev, Done):
                summary = ev.summary
                continue
            if watch is not None and not job.cancelled and time.monotonic() >= check_at:
                check_at = time.monotonic() + HUNG_UP_CHECK_SECS
                if watch():
                    _client_left(loaded, job)
        status = "499" if summary["finish_reason"] == "cancelled" else "200"
        neuron.metrics.requests.labels(loaded.id, endpoint, status).inc()
        return reply.complete(summary)
    except ApiError as exc:
        neuron.metrics.requests.labels(loaded.id, endpoint, str(exc.status)).inc()
        raise
    finally:
        waiter.release()


def _client_left(loaded: Loaded, job: Job) -> None:
    """A non-streaming client closed its side: free the slot now, as a stream's does. A job
    that had started ends with what it generated, and that reply still goes out: a gateway
    that half-closed (its own client left, or its deadline passed) reads it and bills it."""
    if loaded.scheduler.withdraw(job):  # it never started: nothing was generated
        raise ApiError("the client closed the connection before the request started",
                       code="client_closed", status=499)


def _stream(neuron: Neuron, reply: ReplyBuilder, waiter: Waiter, endpoint: str,
            watch: Callable[[], bool] | None = None) -> Iterator[bytes]:
    status = "200"
    coalesce = neuron.cfg.stream_interval_ms / 1000
    job = waiter.job
    try:
        opened = not reply.chat  # a chat stream opens with its role chunk
        if not job.started.is_set():
            yield b": queued\n\n"  # the reply's head goes out now, not once a slot frees
        wrote = check_at = time.monotonic()
        every = KEEPALIVE_SECS if watch is None else HUNG_UP_CHECK_SECS
        for ev in waiter.events(keepalive=True, coalesce=coalesce, every=every):
            now = time.monotonic()
            if watch is not None and not job.cancelled and now >= check_at:
                # A client that closed its sending side (a gateway stopping the request)
                # is still reading: the stream ends with what was generated, and its usage.
                check_at = now + HUNG_UP_CHECK_SECS
                if watch():
                    _client_left(reply.loaded, job)
            if isinstance(ev, KeepAlive):
                if now - wrote >= KEEPALIVE_SECS:
                    wrote = now
                    yield b": keep-alive\n\n"
                continue
            wrote = now
            if not opened:
                # Once the request has a slot (keep-alives while it queues): the prompt's
                # size and how much of it the slot's cache held (extension fields), which
                # the gateway needs for Anthropic's message_start, the first event of all.
                opened = True
                first = reply.chunk({"role": "assistant", "content": ""})
                first["helexa_prompt_tokens"] = reply.prompt_tokens
                first["helexa_cached_tokens"] = ev.cached_tokens if isinstance(ev, Started) else 0
                yield sse_event(first)
            if isinstance(ev, Text):
                reply.generated.append(ev.text)
                for chunk in reply.stream_parts(reply.parse(ev.text)):
                    yield sse_event(chunk)
            elif isinstance(ev, Done):
                if ev.summary["finish_reason"] == "cancelled":
                    status = "499"
                for chunk in reply.stream_parts(reply.finish_parts()):
                    yield sse_event(chunk)
                yield sse_event(reply.final_chunk(ev.summary))
                yield sse_event(reply.usage_chunk(ev.summary))
        yield b"data: [DONE]\n\n"
    except ApiError as exc:
        # An error mid-stream (the model unloaded, the engine failed): its envelope, then
        # the usage of what was generated, so that every stream ends billed.
        status = str(exc.status)
        yield sse_event(exc.body())
        yield sse_event(reply.usage_chunk(reply.partial_summary(waiter.texts)))
        yield b"data: [DONE]\n\n"
    except GeneratorExit:
        status = "499"  # the client went away: the finally below frees the slot
        raise
    finally:
        waiter.release()
        neuron.metrics.requests.labels(reply.loaded.id, endpoint, status).inc()


class ReplyBuilder:
    """Builds OpenAI-shaped replies (whole or chunked) from the model's text."""

    def __init__(self, loaded: Loaded, *, chat: bool, prompt: Prompt, stream: bool = False
                 ) -> None:
        self.loaded = loaded
        self.chat = chat
        self.prompt_tokens = len(prompt.tokens)
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        # The model's family reads its content, reasoning and calls out of the text; a
        # stream gets a call's arguments as they come, where the family can tell them.
        self.parser = prompt.family.parser(
            tools=Tools.of(prompt.offered), in_reasoning=prompt.in_reasoning,
            parse_tools=prompt.tools, stream_args=stream) if chat else None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[Part] = []
        self.generated: list[str] = []  # the model's text so far, for an error's usage

    def parse(self, text: str) -> list[Part]:
        if self.parser is None:
            return [Part("content", text=text)]
        try:
            return self.parser.feed(text)
        except Exception:  # a parser bug: the client gets the text, never a cut stream
            return self._parser_failed(text)

    def finish_parts(self) -> list[Part]:
        if self.parser is None:
            return []
        try:
            return self.parser.finish()
        except Exception:
            return self._parser_failed("")

    def _parser_failed(self, text: str) -> list[Part]:
        log.exception("the %s output parser failed on %s's output; the rest is content",
                      type(self.parser).__name__, self.loaded.id)
        self.parser = None
        return [Part("content", text=text)] if text else []

    def partial_summary(self, events: int) -> dict[str, Any]:
        """The usage of a generation that ended in an error: its text events (one a token
        but where text was held back) or the tokens of its text, whichever is more."""
        text = "".join(self.generated)
        try:
            with self.loaded.lease() as model:
                counted = len(model.tokenize(text, add_bos=False)) if text else 0
        except Unavailable:  # unloaded since: a fair estimate
            counted = len(text) // 4
        completion = max(events, counted)
        return {"finish_reason": "error", "stop": None, "completion_tokens": completion,
                "prompt_tokens": self.prompt_tokens, "cached_tokens": 0, "prefill_ms": 0.0,
                "decode_ms": 0.0, "prefill_tokens": self.prompt_tokens, "queue_ms": 0.0}

    def feed(self, text: str) -> None:
        self._collect(self.parse(text))

    def _collect(self, parts: list[Part]) -> None:
        for p in parts:
            if p.kind == "content":
                self.content.append(p.text)
            elif p.kind == "reasoning":
                self.reasoning.append(p.text)
            elif p.kind == "call_args":
                self.calls[-1].arguments += p.text
            else:  # a call, or the start of one whose arguments follow
                self.calls.append(p)

    def _finish_reason(self, summary: dict) -> str:
        if summary["finish_reason"] == "stop" and self.calls:
            return "tool_calls"
        return "stop" if summary["finish_reason"] in ("stop", "cancelled") else "length"

    def _usage(self, s: dict) -> dict[str, Any]:
        reasoning_tokens = 0
        if self.reasoning:
            text = "".join(self.reasoning)
            try:
                with self.loaded.lease() as model:
                    counted = len(model.tokenize(text, add_bos=False))
            except Unavailable:  # unloaded since the text was generated: a fair estimate
                counted = len(text) // 4
            reasoning_tokens = min(s["completion_tokens"], counted)
        return {
            "prompt_tokens": s["prompt_tokens"], "completion_tokens": s["completion_tokens"],
            "total_tokens": s["prompt_tokens"] + s["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": s["cached_tokens"]},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
        }

    @staticmethod
    def _timing(s: dict) -> dict[str, Any]:
        return {"prefill_ms": s["prefill_ms"], "decode_ms": s["decode_ms"],
                "prefill_tokens": s["prefill_tokens"], "queue_ms": s["queue_ms"]}

    # Each final choice carries `stop_reason`, the stop string that ended the text or None
    # (vLLM's extension): finish_reason "stop" alone cannot tell a stop string from EOS.
    def complete(self, summary: dict) -> dict[str, Any]:
        self._collect(self.finish_parts())
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
            if self.reasoning:
                message["reasoning_content"] = "".join(self.reasoning)
            if self.calls:
                message["tool_calls"] = [_tool_call(p) for p in self.calls]
                message["content"] = message["content"] or None
            choice = {"index": 0, "message": message, "logprobs": None,
                      "finish_reason": self._finish_reason(summary),
                      "stop_reason": summary["stop"]}
        else:
            choice = {"index": 0, "text": "".join(self.content), "logprobs": None,
                      "finish_reason": self._finish_reason(summary),
                      "stop_reason": summary["stop"]}
        body = self._envelope([choice])
        body["usage"] = self._usage(summary)
        body["helexa_timing"] = self._timing(summary)
        return body

    def _envelope(self, choices: list) -> dict[str, Any]:
        obj = ("chat.completion" if self.chat else "text_completion")
        return {"id": self.id, "object": obj, "created": self.created,
                "model": self.loaded.id, "choices": choices}

    def chunk(self, delta: dict | None = None, finish: str | None = None, text: str = ""
              ) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
            body = self._envelope([choice])
            body["object"] = "chat.completion.chunk"
        else:
            body = self._envelope([{"index": 0, "text": text, "logprobs": None,
                                    "finish_reason": finish}])
        return body

    def stream_parts(self, parts: list[Part]) -> Iterator[dict[str, Any]]:
        for p in parts:
            if not self.chat:
                yield self.chunk(text=p.text)
            elif p.kind == "content":
                yield self.chunk({"content": p.text})
            elif p.kind == "reasoning":
                self.reasoning.append(p.text)
                yield self.chunk({"reasoning_content": p.text})
            elif p.kind == "call_args":  # more of the last call's arguments
                yield self.chunk({"tool_calls": [{"index": len(self.calls) - 1,
                                                  "function": {"arguments": p.text}}]})
            else:  # a call whole, or the start of one (its arguments "" so far)
                index = len(self.calls)
                self.calls.append(p)
                yield self.chunk({"tool_calls": [dict(_tool_call(p), index=index)]})

    def final_chunk(self, summary: dict) -> dict[str, Any]:
        body = self.chunk({}, finish=self._finish_reason(summary))
        body["choices"][0]["stop_reason"] = summary["stop"]
        return body

    def usage_chunk(self, summary: dict) -> dict[str, Any]:
        body = self._envelope([])
        if self.chat:
            body["object"] = "chat.completion.chunk"
        body["usage"] = self._usage(summary)
        body["helexa_timing"] = self._timing(summary)
        return body


def _tool_call(p: Part) -> dict[str, Any]:
    return {"id": p.call_id, "type": "function",
            "function": {"name": p.name, "arguments": p.arguments}}


def count_tokens(neuron: Neuron, body: dict) -> dict[str, Any]:
    """Prompt tokens a request would use, with the model's own template and tokenizer."""
    loaded = neuron.registry.find(body.get("model"))
    with loaded.lease() as model:
        if "messages" in body:
            prompt = chatmod.chat_prompt(body, model, loaded.family)
        else:
            prompt = chatmod.completion_prompt(body, model)
        return {"model": loaded.id, "tokens": len(prompt.tokens), "n_ctx": model.n_ctx}
