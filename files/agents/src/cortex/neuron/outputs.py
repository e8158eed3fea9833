"""Splits a chat model's text into content, reasoning and tool calls, as it streams.

Reasoning models wrap their thoughts in `<think>…</think>`; Hermes/Qwen-style tool use
emits `<tool_call>{"name": …, "arguments": {…}}</tool_call>`. Markers may arrive split
across tokens, so a tail that could still become a marker is held back.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_OPENERS = {THINK_OPEN: "think", TOOL_OPEN: "tool"}
_CLOSERS = {"think": THINK_CLOSE, "tool": TOOL_CLOSE}


@dataclass
class Part:
    kind: str  # "content" | "reasoning" | "tool_call"
    text: str = ""
    name: str = ""
    arguments: str = ""  # JSON text, as OpenAI's tool_calls carry it
    call_id: str = ""


class OutputParser:
    def __init__(self, *, in_reasoning: bool = False, parse_tools: bool = True) -> None:
        self._state = "think" if in_reasoning else "content"
        self._buf = ""
        self._parse_tools = parse_tools
        self._openers = {m: s for m, s in _OPENERS.items() if parse_tools or s != "tool"}
        self.tool_calls = 0
        self._strip_newlines = False

    def feed(self, text: str) -> list[Part]:
        self._buf += text
        parts: list[Part] = []
        while True:
            if self._state == "content":
                at, marker = _find_first(self._buf, self._openers)
                if marker is None:
                    keep = _partial_tail(self._buf, list(self._openers))
                    self._emit(parts, "content", self._buf[: len(self._buf) - keep])
                    self._buf = self._buf[len(self._buf) - keep:]
                    return parts
                self._emit(parts, "content", self._buf[:at])
                self._buf = self._buf[at + len(marker):]
                self._state = self._openers[marker]
            else:
                close = _CLOSERS[self._state]
                at = self._buf.find(close)
                if at < 0:
                    if self._state == "think":
                        keep = _partial_tail(self._buf, [close])
                        self._emit(parts, "reasoning", self._buf[: len(self._buf) - keep])
                        self._buf = self._buf[len(self._buf) - keep:]
                    return parts
                body, self._buf = self._buf[:at], self._buf[at + len(close):]
                if self._state == "think":
                    self._emit(parts, "reasoning", body)
                    self._strip_newlines = True  # "</think>\n\nAnswer" → "Answer"
                else:
                    parts.append(self._tool_part(body))
                    self._strip_newlines = True  # the newline between two calls is no text
                self._state = "content"

    def finish(self) -> list[Part]:
        """End of output: an unclosed tool call is left as text, never lost."""
        parts: list[Part] = []
        if self._state == "tool":
            parts.append(self._tool_part(self._buf, closed=False))
        elif self._buf:
            self._emit(parts, "reasoning" if self._state == "think" else "content", self._buf)
        self._buf = ""
        return parts

    def _tool_part(self, body: str, closed: bool = True) -> Part:
        try:
            # strict=False: a raw newline in a string is the model's text, not a broken call
            call = json.loads(body, strict=False)
            name = call["name"]
            args = call.get("arguments", call.get("parameters", {}))
            if not isinstance(name, str):
                raise TypeError("name must be a string")
        except (ValueError, KeyError, TypeError, AttributeError):
            # Not a valid call: keep the model's words as text rather than drop them.
            tail = TOOL_CLOSE if closed else ""
            return Part("content", text=f"{TOOL_OPEN}{body}{tail}")
        self.tool_calls += 1
        return Part("tool_call", name=name,
                    arguments=args if isinstance(args, str) else json.dumps(args),
                    call_id=f"call_{uuid.uuid4().hex[:24]}")

    def _emit(self, parts: list[Part], kind: str, text: str) -> None:
        if kind == "content" and self._strip_newlines:
            text = text.lstrip("\n")
            self._strip_newlines = not text
        if not text:
            return
        if parts and parts[-1].kind == kind:
            parts[-1].text += text
        else:
            parts.append(Part(kind, text=text))


def _find_first(buf: str, markers: dict[str, str]) -> tuple[int, str | None]:
    best: tuple[int, str | None] = (-1, None)
    for m in markers:
        at = buf.find(m)
        if at >= 0 and (best[1] is None or at < best[0]):
            best = (at, m)
    return best


def _partial_tail(buf: str, markers: list[str]) -> int:
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(buf)), best, -1):
            if buf.endswith(m[:n]):
                best = n
                break
    return best
