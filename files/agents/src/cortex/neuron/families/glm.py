"""GLM-4.5, 4.6, 4.7: `<tool_call>NAME<arg_key>k</arg_key><arg_value>v</arg_value></tool_call>`
(newlines between the tags in 4.5/4.6), values untyped; thoughts in `<think>`."""

from __future__ import annotations

import re
from typing import Any

from cortex.neuron.families.base import Family, Malformed, Part, Tools, call, typed
from cortex.neuron.families.grammar import Rules, lit, xml_params
from cortex.neuron.families.hermes import TOOL_CLOSE, TOOL_OPEN
from cortex.neuron.families.stream import Block, Parser, Syntax

ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def parse_glm(body: str, tools: Tools) -> list[Part]:
    at = body.find("<arg_key>")
    name = tools.check(body if at < 0 else body[:at])
    args = {}
    rest = body[len(body) if at < 0 else at:]
    for m in ARG.finditer(rest):
        key = m.group(1).strip()
        args[key] = typed(m.group(2), tools.param(name, key))
    if ARG.sub("", rest).strip():
        raise Malformed("text between arguments")
    return [call(name, args)]


class Glm(Family):
    name = "glm"
    title = "GLM-4.5, GLM-4.6, GLM-4.7"

    @staticmethod
    def detect(template: str) -> bool:
        return "<arg_key>" in template

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        # GLM-4.5/4.6 put newlines between the tags, 4.7 none: either.
        nl = r.add('"\\n"?', "nl")
        args = xml_params(r, params, open_tag="<arg_key>{}</arg_key>", mid="",
                          close="</arg_value>", between=f"{nl} {lit('<arg_value>')}",
                          after=nl)
        return f"{lit(TOOL_OPEN + name)} {nl} {args} {lit(TOOL_CLOSE)}"

    def parser(self, *, tools: Tools, in_reasoning: bool, parse_tools: bool) -> Parser:
        # A call cut short may still look whole (`<tool_call>name`): only a closed one is.
        block = Block(TOOL_OPEN, lambda body: parse_glm(body, tools), close=TOOL_CLOSE,
                      complete_at_end=False)
        return Parser(Syntax(self.reasoning, [block]), in_reasoning=in_reasoning,
                      parse_tools=parse_tools)
