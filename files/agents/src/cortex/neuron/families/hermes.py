"""Hermes 2/3, Qwen 2.5, Qwen3, QwQ: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`,
thoughts in `<think>…</think>`. Also what a template that knows nothing of tools is taught
(the `generic` family): chat.py describes the tools in the system prompt the Hermes way.
"""

from __future__ import annotations

import re
from typing import Any

from cortex.neuron.families.base import Malformed, Part, Tools, call, loads
from cortex.neuron.families.family import Family
from cortex.neuron.families.grammar import ANY_OBJECT, Rules, json_name, lit
from cortex.neuron.families.stream import Block, json_head

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
# A JSON call's head, up to its arguments, as the models write it (the name first): what a
# stream needs to send the arguments as they come. Other orders go whole.
JSON_HEAD = re.compile(r'\s*\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?"name"\s*:\s*'
                       r'"(?P<name>[^"\\]*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


def parse_json_calls(body: str, tools: Tools, *, args_keys=("arguments", "parameters")
                     ) -> list[Part]:
    """`{"name": …, "arguments": {…}}` (or a list of them) as calls."""
    value = loads(body)
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise Malformed("a call needs a name")
        args: Any = {}
        for key in args_keys:
            if key in item:
                args = item[key]
                break
        call_id = item.get("id") if isinstance(item.get("id"), str) else ""
        out.append(call(tools.check(item["name"]), args, call_id))
    return out


class Hermes(Family):
    name = "hermes"
    title = "Qwen3, QwQ, Qwen2.5, Hermes 2/3"

    @staticmethod
    def detect(template: str) -> bool:
        return TOOL_OPEN in template

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        return (f'{lit(TOOL_OPEN)} "\\n"? "{{" space "\\"name\\"" space ":" space '
                f'{json_name(name)} space "," space "\\"arguments\\"" space ":" space '
                f'{r.schema(params or ANY_OBJECT)} "}}" space "\\n"? {lit(TOOL_CLOSE)}')

    def blocks(self, tools: Tools) -> list[Block]:
        return [Block(TOOL_OPEN, lambda body: parse_json_calls(body, tools), close=TOOL_CLOSE,
                      head=json_head(JSON_HEAD, tools))]


class Generic(Hermes):
    """A template we do not recognise: its tools (if it knows none) are described the
    Hermes way, and the output read that way; `<think>` is read as reasoning."""

    name = "generic"
    title = "any other template (tools described the Hermes way when it knows none)"

    @staticmethod
    def detect(template: str) -> bool:
        return True

    def describes_tools(self, template: str, *, forced: bool = False) -> bool:
        # Its own syntax for calls is unknown: a forced call is prompted and written the
        # Hermes way, the one the parser and the grammar know.
        return "tools" in template and not forced
