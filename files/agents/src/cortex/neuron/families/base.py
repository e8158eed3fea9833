"""What the families' parsers read a model's output into (`Part`), and the helpers they
read it with: the tools offered, bounded JSON (whole, or where a value ends as it streams),
values typed from a tool's schema, call ids.

Model output is untrusted text: nothing here raises on it. A call that cannot be read
(bad JSON, an unknown function, nesting past MAX_DEPTH, cut short) is `Malformed`, which
the parsers turn back into the model's own words as content.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 64  # JSON nesting a call's arguments may have; deeper is malformed, not a crash


class Malformed(ValueError):
    """Model output that does not read as the family's call syntax (kept as content)."""


@dataclass
class Part:
    # "content" | "reasoning" | "tool_call" | "call_start" (a call whose arguments follow
    # as "call_args" parts: a stream's parser only)
    kind: str
    text: str = ""
    name: str = ""
    arguments: str = ""  # JSON text, as OpenAI's tool_calls carry it
    call_id: str = ""


@dataclass
class Tools:
    """The tools offered to the model, by name: their parameter schemas type the values
    that some families write untyped, and a call to any other name is malformed."""

    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, tools: list[dict[str, Any]] | None) -> Tools:
        schemas = {}
        for t in tools or []:
            fn = t.get("function") if isinstance(t, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                params = fn.get("parameters")
                schemas[fn["name"]] = params if isinstance(params, dict) else {}
        return cls(schemas)

    def check(self, name: str) -> str:
        name = name.strip()
        if not name or (self.schemas and name not in self.schemas):
            raise Malformed(f"no tool named {name!r}")
        return name

    def param(self, name: str, key: str) -> dict[str, Any] | None:
        props = self.schemas.get(name, {}).get("properties")
        schema = props.get(key) if isinstance(props, dict) else None
        return schema if isinstance(schema, dict) else None


def call(name: str, arguments: Any, call_id: str = "") -> Part:
    """A tool-call part; `arguments` an object (or JSON text of one)."""
    if isinstance(arguments, str):
        arguments = loads(arguments) if arguments.strip() else {}
    if not isinstance(arguments, dict):
        raise Malformed("arguments must be a JSON object")
    return Part("tool_call", name=name, arguments=json.dumps(arguments, ensure_ascii=False),
                call_id=call_id or new_call_id())


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


def depth(text: str) -> int:
    """How deeply brackets nest in JSON text (strings skipped)."""
    deepest = level = 0
    for m in _BRACKETS.finditer(_STRINGS.sub("", text)):
        level += 1 if m.group() in "[{" else -1
        deepest = max(deepest, level)
    return deepest


def loads(text: str) -> Any:
    """JSON from the model, nesting bounded: Malformed instead of any exception."""
    if depth(text) > MAX_DEPTH:
        raise Malformed(f"nested more than {MAX_DEPTH} levels deep")
    try:
        # strict=False: a raw newline in a string is the model's text, not a broken call
        return json.loads(text, strict=False)
    except (ValueError, RecursionError) as exc:
        raise Malformed(str(exc)) from None


class JsonEnd:
    """Where a JSON object or array ends, read piece by piece as it streams (the json module
    reads only whole documents; this finds the end in one pass over the pieces)."""

    _OUT = re.compile(r'["\[\]{}]')
    _IN = re.compile(r'["\\]')

    def __init__(self) -> None:
        self.level = 0
        self.in_string = False
        self.escaped = False  # a backslash ended the last piece
        self.started = False

    def feed(self, piece: str) -> int | None:
        """The index just past the value's end in `piece`, or None while it is still open;
        Malformed when it does not start with `{` or `[`, or nests past MAX_DEPTH."""
        pos = 0
        if not self.started:
            stripped = piece.lstrip()
            if not stripped:
                return None
            if stripped[0] not in "[{":
                raise Malformed("expected a JSON object or array")
            self.started = True
            pos = len(piece) - len(stripped)
        if self.escaped:
            self.escaped, pos = False, pos + 1
        while pos < len(piece):
            if self.in_string:
                m = self._IN.search(piece, pos)
                if m is None:
                    return None
                if m.group() == "\\":
                    if m.end() >= len(piece):  # the escaped character is in the next piece
                        self.escaped = True
                        return None
                    pos = m.end() + 1
                    continue
                self.in_string = False
                pos = m.end()
                continue
            m = self._OUT.search(piece, pos)
            if m is None:
                return None
            pos = m.end()
            c = m.group()
            if c == '"':
                self.in_string = True
            elif c in "[{":
                self.level += 1
                if self.level > MAX_DEPTH:
                    raise Malformed(f"nested more than {MAX_DEPTH} levels deep")
            else:
                self.level -= 1
                if self.level <= 0:
                    return pos
        return None
