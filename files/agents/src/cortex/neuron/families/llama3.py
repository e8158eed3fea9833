"""Llama 3.1, 3.2, 3.3: a call is the whole reply, bare JSON,
`{"name": "NAME", "parameters": {...}}` (3.2 and 3.3 sometimes add `"type": "function"`),
several joined by `;`; builtin tools after `<|python_tag|>` as `NAME.call(key="value")`,
or code for a `python`/`code_interpreter` tool. No reasoning.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cortex.neuron.families.base import Malformed, Part, Tools, call, loads
from cortex.neuron.families.family import Family, one_call_per_message
from cortex.neuron.families.grammar import ANY_OBJECT, Rules, json_name
from cortex.neuron.families.hermes import JSON_HEAD, parse_json_calls
from cortex.neuron.families.stream import Block, json_head

PYTHON_TAG = "<|python_tag|>"
BUILTIN = re.compile(r"\s*(\w+)\.call\((.*)\)\s*$", re.S)
KEYWORD = re.compile(r"\s*(\w+)\s*=\s*")


def parse_python_tag(body: str, tools: Tools) -> list[Part]:
    head = body.strip()
    if head.startswith("{"):
        return parse_json_calls(head, tools, args_keys=("parameters", "arguments"))
    m = BUILTIN.match(head)
    if m is not None:
        return [call(tools.check(m.group(1)), _keywords(m.group(2)))]
    for name in ("python", "code_interpreter"):
        if name in tools.schemas:
            return [call(name, {"code": head})]
    raise Malformed("not a call")


def _keywords(text: str) -> dict:
    """`key="value", n=1` (values JSON) as an object."""
    out = {}
    decoder = json.JSONDecoder()
    pos = 0
    while pos < len(text.strip()):
        m = KEYWORD.match(text, pos)
        if m is None:
            raise Malformed("expected key=value")
        try:
            value, pos = decoder.raw_decode(text, m.end())
        except (ValueError, RecursionError):
            raise Malformed("bad value") from None
        out[m.group(1)] = value
        rest = text[pos:].lstrip()
        if rest.startswith(","):
            pos = len(text) - len(rest) + 1
        elif rest:
            raise Malformed("expected , or )")
        else:
            break
    return out


def parse_bare(body: str, tools: Tools) -> list[Part]:
    value = loads(body)
    if not isinstance(value, dict) or value.get("type", "function") != "function":
        raise Malformed("not a call")
    if "parameters" not in value and "arguments" not in value:
        raise Malformed("not a call")
    return parse_json_calls(body, tools, args_keys=("parameters", "arguments"))


class Llama3(Family):
    name = "llama3"
    title = "Llama 3.1, 3.2, 3.3"
    markers = (PYTHON_TAG,)

    @staticmethod
    def detect(template: str) -> bool:
        return "<|start_header_id|>" in template and "ipython" in template

    def prepare(self, messages: list[dict[str, Any]], template: str) -> list[dict[str, Any]]:
        return one_call_per_message(messages)  # "only supports single tool-calls at once"

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        return (f'"{{" space "\\"name\\"" space ":" space {json_name(name)} space "," space '
                f'"\\"parameters\\"" space ":" space {r.schema(params or ANY_OBJECT)} "}}"')

    def calls_rule(self, one: str, parallel: bool) -> str:
        return f'{one} ( ";" space {one} )*' if parallel else one

    def blocks(self, tools: Tools) -> list[Block]:
        return [
            Block("{", lambda body: parse_bare(body, tools), keep_open=True, at_start=True,
                  expect=('"name"', '"type"'), swallow=(";",),
                  head=json_head(JSON_HEAD, tools)),
            Block(PYTHON_TAG, lambda body: parse_python_tag(body, tools), to_end=True),
        ]
