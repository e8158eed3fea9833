"""Calls written as XML-ish tags with bare values (Qwen3-Coder, GLM, MiniMax, DeepSeek V3.2's
DSML): one reader of the tags, the families differing only in their patterns and in how a
value reads. Values are text; the tool's JSON schema says which are JSON (`typed`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cortex.neuron.families.base import Malformed, Part, Tools, call, loads

# A parameter's match and its schema -> its value.
Value = Callable[[re.Match, dict[str, Any] | None], Any]


def typed_value(p: re.Match, schema: dict[str, Any] | None) -> Any:
    """The value in the pattern's second group, typed from the schema."""
    return typed(p.group(2), schema)


def read_calls(body: str, tools: Tools, invoke: re.Pattern, param: re.Pattern, *,
               key: Callable[[str], str] = str.strip, value: Value = typed_value
               ) -> list[Part]:
    """Every `invoke` match in `body` (the function's name, then its parameters) as a call;
    Malformed if any text stands beside them."""
    out = []
    for m in invoke.finditer(body):
        name = tools.check(key(m.group(1)))
        out.append(call(name, read_args(m.group(2), name, tools, param, key=key, value=value)))
    if invoke.sub("", body).strip():
        raise Malformed("text beside the calls")
    return out


def read_args(text: str, name: str, tools: Tools, param: re.Pattern, *,
              key: Callable[[str], str] = str.strip, value: Value = typed_value
              ) -> dict[str, Any]:
    """Every `param` match in `text` (the key, then its value) as the call's arguments;
    Malformed if any text stands between them."""
    if param.sub("", text).strip():
        raise Malformed("text between parameters")
    args = {}
    for p in param.finditer(text):
        k = key(p.group(1))
        args[k] = value(p, tools.param(name, k))
    return args


def typed(raw: str, schema: dict[str, Any] | None) -> Any:
    """A parameter value the family wrote as bare text, typed by its JSON schema: text for a
    string parameter, JSON for the others, and a best guess when the schema does not say."""
    kinds = _types(schema)
    if kinds == {"string"}:
        return raw
    try:
        value = loads(raw)
    except Malformed:
        return raw
    if not kinds or _type_of(value) in kinds or (
            _type_of(value) == "integer" and "number" in kinds):
        return value
    return raw if "string" in kinds else value


def _types(schema: dict[str, Any] | None) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    if isinstance(schema.get("enum"), list):
        return {_type_of(v) for v in schema["enum"]}
    if "const" in schema:
        return {_type_of(schema["const"])}
    out: set[str] = set()
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            out |= _types(sub)
    return out


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
