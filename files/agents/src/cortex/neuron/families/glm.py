"""GLM-4.5, 4.6, 4.7: `<tool_call>NAME<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>`
(newlines between the tags in 4.5/4.6), values untyped; thoughts in `<think>`."""

from __future__ import annotations

import re
from typing import Any

from cortex.neuron.families.base import Part, Tools, call
from cortex.neuron.families.family import Family
from cortex.neuron.families.grammar import Rules, lit, xml_params
from cortex.neuron.families.hermes import TOOL_CLOSE, TOOL_OPEN
from cortex.neuron.families.stream import Block
from cortex.neuron.families.xml_calls import read_args

ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def parse_glm(body: str, tools: Tools) -> list[Part]:
    at = body.find("<arg_key>")
    at = len(body) if at < 0 else at
    name = tools.check(body[:at])
    return [call(name, read_args(body[at:], name, tools, ARG))]


class Glm(Family):
    name = "glm"
    title = "GLM-4.5, GLM-4.6, GLM-4.7"

    @staticmethod
    def detect(template: str) -> bool:
        return "<arg_key>" in template

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        # GLM-4.5/4.6 put newlines between the tags, 4.7 none: either.
        nl = r.add('"\\n"?', "nl")
        args = xml_params(r, params, open_tag="<arg_key>{key}</arg_key>", mid="",
                          close="</arg_value>", between=f"{nl} {lit('<arg_value>')}",
                          after=nl)
        return f"{lit(TOOL_OPEN + name)} {nl} {args} {lit(TOOL_CLOSE)}"

    def blocks(self, tools: Tools) -> list[Block]:
        # A call cut short may still look whole (`<tool_call>name`): only a closed one is.
        return [Block(TOOL_OPEN, lambda body: parse_glm(body, tools), close=TOOL_CLOSE,
                      complete_at_end=False)]
