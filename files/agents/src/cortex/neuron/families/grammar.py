"""GBNF for a forced tool call, in the family's own syntax.

A family writes one call as a GBNF expression (`Family.call_rule`) out of the pieces here:
literals, text up to a marker, and the grammar of a JSON Schema (llama-cpp-python's
converter, via structured.py). Each schema's rules get a prefix of their own, so several
tools' grammars (each with its `root`, `space`, property rules) live side by side.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cortex.neuron.structured import schema_gbnf

_RULE = re.compile(r"^([A-Za-z0-9-]+) ::= ", re.M)
# A GBNF rule body's pieces: literals and character classes (never renamed), repetition
# counts, rule names, and single characters.
_PIECE = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{[\d,\s]*\}|[A-Za-z0-9-]+|.',
                    re.S)
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def lit(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def json_name(name: str) -> str:
    """A tool's name as a JSON string literal, as a GBNF literal."""
    return lit(json.dumps(name, ensure_ascii=False))


class Rules:
    """The rules of one grammar as they are built; `add` returns a fresh rule's name."""

    def __init__(self) -> None:
        self.rules: list[str] = ['space ::= " "?']
        self._n = 0
        self._until: dict[str, str] = {}

    def add(self, body: str, stem: str = "r") -> str:
        self._n += 1
        name = f"{stem}-{self._n}"
        self.rules.append(f"{name} ::= {body}")
        return name

    def schema(self, schema: Any) -> str:
        """The rule for JSON values of `schema`; SchemaError when it cannot be enforced."""
        self._n += 1
        prefix = f"s{self._n}-"
        self.rules += _prefixed(schema_gbnf(schema), prefix)
        return f"{prefix}root"

    def until(self, marker: str) -> str:
        """The rule for any text that does not contain `marker` (the marker not included)."""
        if marker not in self._until:
            self._n += 1
            stem = f"u{self._n}"
            self.rules += _without(marker, stem)
            self._until[marker] = f"{stem}-0"
        return self._until[marker]

    def text(self) -> str:
        return "\n".join(self.rules)


def xml_params(r: Rules, params: dict[str, Any] | None, *, open_tag: str, mid: str,
               close: str, between: str = "", after: str = "") -> str:
    """Parameters the XML-ish families write one by one with bare values: for each property
    `open_tag.format(key=KEY, text=true|false) [between] value close [mid] [after]`,
    required ones in order and others optional (`between`, `after`: GBNF; the others
    literals; `text` says whether the value is bare text). String values are any text up
    to `close`; the others JSON of their schema."""
    params = params if isinstance(params, dict) else ANY_OBJECT
    props = params.get("properties") if isinstance(params.get("properties"), dict) else {}
    required = set(params.get("required") or [])
    tail = f"{lit(close)}{' ' + lit(mid) if mid else ''} {after}"
    pieces = []
    for key, schema in props.items():
        schema = schema if isinstance(schema, dict) else {}
        is_text = schema.get("type") == "string" and not schema.get("enum")
        value = r.until(close) if is_text else r.schema(schema)
        tag = open_tag.format(key=key, text=str(is_text).lower())
        one = f"{lit(tag)} {between} {value} {tail}"
        pieces.append(one if key in required else f"( {one} )?")
    if not props:  # a tool with no schema: any parameters, their values any text
        slots = {"\0": r.add('[A-Za-z0-9_.-]+', "key"), "\1": '( "true" | "false" )'}
        tag = " ".join(slots.get(p) or lit(p) for p in
                       re.split("([\0\1])", open_tag.format(key="\0", text="\1")) if p)
        return f"( {tag} {between} {r.until(close)} {tail} )*"
    return " ".join(pieces) or '""'


def _prefixed(gbnf: str, prefix: str) -> list[str]:
    pieces = _RULE.split(gbnf)[1:]
    rules = dict(zip(pieces[::2], pieces[1::2], strict=True))

    def rename(body: str) -> str:
        return "".join(prefix + p if p in rules else p for p in _PIECE.findall(body.strip()))

    return [f"{prefix}{name} ::= {rename(body)}" for name, body in rules.items()]


def _without(marker: str, name: str) -> list[str]:
    """Rules `name-0`.. for any text that never contains `marker`: the states of a matcher
    that has read the first k characters of it (`marker[0]` must not recur in it)."""
    first = marker[0]
    if first in marker[1:]:
        raise ValueError(f"{marker!r}: its first character recurs")
    rules = []
    for k, want in enumerate(marker):
        alts = []
        if k + 1 < len(marker):
            alts.append(f"{lit(want)} {name}-{k + 1}")
        if want != first:
            alts.append(f"{lit(first)} {name}-1")
        alts.append(f"[^{_chars({want, first})}] {name}-0")
        rules.append(f"{name}-{k} ::= ( {' | '.join(alts)} )?")
    return rules


def _chars(chars: set[str]) -> str:
    return "".join(f"\\x{ord(c):02X}" if ord(c) < 256 else f"\\u{ord(c):04X}"
                   for c in sorted(chars))
