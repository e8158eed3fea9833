"""gpt-oss (OpenAI's Harmony format): the reply is a run of messages, each a header and a
body, on channels:

    <|channel|>analysis<|message|>thinking…<|end|>
    <|start|>assistant<|channel|>final<|message|>the answer
    <|start|>assistant to=functions.NAME<|channel|>commentary <|constrain|>json<|message|>{…}

`analysis` is reasoning, `final` (and `commentary` addressed to no one) is content, a
message addressed `to=functions.NAME` is a call (the recipient may sit before or after the
channel). Messages to the model's builtin tools (`to=python`, `to=browser.search`) are not
for the client and are dropped, as llama.cpp does. `<|call|>` and `<|return|>` end the
generation; the other markers are special tokens the engine must show.

The template wants earlier thoughts in `thinking` and at most one call per assistant
message: `prepare` gives it that. A stream's parser sends a call's JSON arguments as they
come, as stream.Parser does.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from cortex.neuron.families.base import JsonEnd, Malformed, Part, Tools, call, new_call_id
from cortex.neuron.families.family import Family, one_call_per_message
from cortex.neuron.families.grammar import ANY_OBJECT, Rules, lit
from cortex.neuron.families.steps import MAX_BLOCK_CHARS, StepParser, first, partial_tail

log = logging.getLogger(__name__)

START, CHANNEL, MESSAGE, END = "<|start|>", "<|channel|>", "<|message|>", "<|end|>"
CALL, RETURN, CONSTRAIN = "<|call|>", "<|return|>", "<|constrain|>"
RECIPIENT = re.compile(r"to=([^\s<]+)")
HEADER_STARTS = (CHANNEL, START, " to=", "to=", CONSTRAIN)
ENDS = {END: "end", CALL: "end", RETURN: "end", START: "start", CHANNEL: "channel"}
LONGEST_END = max(map(len, ENDS))
MAX_HEADER = 512


class HarmonyParser(StepParser):
    def __init__(self, tools: Tools, parse_tools: bool, stream_args: bool = False) -> None:
        super().__init__()
        self.tools = tools
        self.parse_tools = parse_tools
        self.stream_args = stream_args
        self._args: JsonEnd | None = None  # a streamed call's arguments: where they end
        self._sent = 0  # how much of the call's body has gone out as its arguments
        self._args_done = False
        self._state = "start"  # start | header | body | loose
        self._kind = ""  # the body's: reasoning | content | call | drop
        self._header = ""
        self._name = ""
        self._scan = 0  # where the search for the body's end resumes

    def _finish(self, parts: list[Part]) -> None:
        if self._state == "body" and self._kind == "call":
            self._stream_call(parts, len(self._buf))
            self._end_call(parts, self._buf)
        else:
            self._emit(parts, self._kind or "content", self._buf)

    def _step(self, parts: list[Part], final: bool) -> bool:
        if self._state == "start":
            head = self._buf.lstrip("\n")
            if not head:
                return False
            if any(head.startswith(h) for h in HEADER_STARTS):
                self._state, self._header, self._buf = "header", "", head
                return True
            if any(h.startswith(head) for h in HEADER_STARTS) and not final:
                return False
            self._state, self._kind = "loose", "content"  # words with no header at all
            return True
        if self._state == "header":
            at = self._buf.find(MESSAGE)
            if at < 0:
                if len(self._buf) <= MAX_HEADER and not final:
                    return False
                # never a header after all: the words as the model wrote them (the marker
                # that opened it is consumed, so this ends)
                self._state, self._kind = "loose", "content"
                self._emit(parts, "content", self._header)
                self._header = ""
                return True
            self._open(self._header + self._buf[:at])
            self._buf = self._buf[at + len(MESSAGE):]
            self._state = "body"
            return True
        # body (or loose text): up to the next marker
        if self._kind == "call":
            at, marker = first(self._buf, ENDS, self._scan)
            self._stream_call(parts, at if marker is not None else
                              len(self._buf) - partial_tail(self._buf, ENDS))
            if marker is None:
                # a call's body waits whole: the next search starts where a marker may
                self._scan = max(0, len(self._buf) - LONGEST_END + 1)
                if len(self._buf) > MAX_BLOCK_CHARS:
                    self._kind = "content"
                    if self._args is None:
                        self._emit(parts, "content", self._raw_header())
                    else:  # a streamed call ends; the rest of its body is words
                        self._end_call(parts, "")
                        self._buf = self._buf[self._sent:]
                return False
            self._end_call(parts, self._buf[:at])
        else:
            at, marker = self._emit_until(parts, self._kind, ENDS, final)
            if marker is None:
                return False
            self._emit(parts, self._kind, self._buf[:at])
        rest = self._buf[at + len(marker):]
        self._scan = 0
        if ENDS[marker] == "end":
            self._state, self._buf = "start", rest
        else:
            self._state, self._header = "header", marker if marker == CHANNEL else ""
            self._buf = rest
        self._kind = ""
        return True

    def _open(self, header: str) -> None:
        """What the message after `header` is."""
        self._header = header
        channel = header.rsplit(CHANNEL, 1)[-1].split(" ", 1)[0].split(CONSTRAIN)[0].strip()
        to = [r for r in RECIPIENT.findall(header) if r != "assistant"]
        recipient = to[-1] if to else ""
        if recipient.startswith("functions.") and self.parse_tools:
            self._kind, self._name = "call", recipient[len("functions."):]
        elif recipient and not recipient.startswith("functions."):
            self._kind = "drop"  # a builtin tool of the model's own (python, browser)
        elif channel == "analysis":
            self._kind = "reasoning"
        else:
            self._kind = "content"

    def _raw_header(self) -> str:
        return self._header + MESSAGE

    def _stream_call(self, parts: list[Part], upto: int) -> None:
        """Sends the call's arguments in its body, up to `upto`, that have not gone yet."""
        if not self.stream_args or self._args_done:
            return
        if self._args is None:
            body = self._buf[:upto].lstrip()
            if not body:
                return
            try:
                name = self.tools.check(self._name)
            except Malformed:
                name = ""
            self._sent = upto - len(body)
            piece, args = body, JsonEnd()
            try:
                if body[0] != "{" or not name:  # not an object, or no tool's
                    raise Malformed("not a call's arguments")
                end = args.feed(piece)
            except Malformed:  # it goes whole (and reads as words)
                self._args_done = True
                return
            self._args = args
            self.tool_calls += 1
            parts.append(Part("call_start", name=name, call_id=new_call_id()))
        else:
            piece = self._buf[self._sent:upto]
            try:
                end = self._args.feed(piece)
            except Malformed:  # nested past the bound: the arguments end here
                end = 0
        if end is not None:
            piece, self._args_done = piece[:end], True
        self._sent += len(piece)
        self._emit(parts, "call_args", piece)

    def _end_call(self, parts: list[Part], body: str) -> None:
        streamed, done = self._args is not None, self._args_done
        self._args, self._sent, self._args_done = None, 0, False
        if streamed:  # announced already: it stands as written
            try:
                call(self._name, body.strip())
            except Malformed:
                done = False
            if not done:
                log.warning("a streamed %s call ended without reading as one (cut short, "
                            "or its arguments malformed); it stands as written", self._name)
            return
        try:
            part = call(self.tools.check(self._name), body.strip())
        except Malformed:
            self._emit(parts, "content", self._raw_header() + body)
            return
        self.tool_calls += 1
        parts.append(part)

    def _emit(self, parts: list[Part], kind: str, text: str) -> None:
        if kind != "drop":
            super()._emit(parts, kind, text)


class Harmony(Family):
    name = "harmony"
    title = "gpt-oss"
    reasoning = None
    markers = (START, CHANNEL, MESSAGE, END, CONSTRAIN, CALL, RETURN)

    @staticmethod
    def detect(template: str) -> bool:
        return CHANNEL in template

    def opens_reasoning(self, prompt: str) -> bool:
        return False

    def template_kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        effort = body.get("reasoning_effort")
        return {"reasoning_effort": effort} if effort in ("low", "medium", "high") else {}

    def prepare(self, messages: list[dict[str, Any]], template: str) -> list[dict[str, Any]]:
        """Thoughts as `thinking` (the template takes it or content in a call's message,
        not both); one call a message."""
        out = []
        for m in one_call_per_message(messages):
            m = dict(m)
            thinking = m.pop("reasoning_content", None)
            if thinking and m["role"] == "assistant":
                m["thinking"] = thinking
                if m.get("tool_calls"):
                    m.pop("content", None)
            out.append(m)
        return out

    def knows_reasoning(self, template: str) -> bool:
        return True

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        # `commentary to=functions.NAME <|constrain|>json<|message|>`; the constraint (or a
        # bare `json`) as the model may write it
        head = lit(f"{CHANNEL}commentary to=functions.{name}")
        return (f'{head} ( " " {lit(CONSTRAIN)}? "json" )? {lit(MESSAGE)} '
                f"{r.schema(params or ANY_OBJECT)}")

    def calls_rule(self, one: str, parallel: bool) -> str:
        return one  # a call ends the generation (<|call|>): one a turn

    def thought_rule(self, r: Rules, *, in_reasoning: bool, may_think: bool) -> str:
        if not may_think:
            return ""
        return (f"( {lit(CHANNEL + 'analysis' + MESSAGE)} {r.until(END)} "
                f"{lit(END + START + 'assistant')} )? ")

    def parser(self, *, tools: Tools, in_reasoning: bool, parse_tools: bool,
               stream_args: bool = False) -> HarmonyParser:
        return HarmonyParser(tools, parse_tools, stream_args)
