"""MiniMax M2: `<minimax:tool_call><invoke name="N"><parameter name="k">v</parameter></invoke>
</minimax:tool_call>`, values untyped; thoughts in `<think>`, which the model needs back on
the turns since the user last spoke (the template keeps `reasoning_content` there)."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from cortex.neuron.families.base import Family, Malformed, Part, Tools, call, typed
from cortex.neuron.families.grammar import Rules, lit, xml_params
from cortex.neuron.families.stream import Block, Parser, Syntax

OPEN, CLOSE = "<minimax:tool_call>", "</minimax:tool_call>"
INVOKE_END = "</invoke>\n" + CLOSE
INVOKE = re.compile(r'<invoke name="([^"]*)">(.*?)</invoke>', re.S)
PARAM = re.compile(r'<parameter name="([^"]*)">(.*?)</parameter>', re.S)


def parse_invokes(body: str, tools: Tools, invoke: re.Pattern = INVOKE,
                  param: re.Pattern = PARAM, string_flag: bool = False) -> list[Part]:
    out = []
    for m in invoke.finditer(body):
        name = tools.check(html.unescape(m.group(1)))
        args = {}
        if param.sub("", m.group(2)).strip():
            raise Malformed("text between parameters")
        for p in param.finditer(m.group(2)):
            key = html.unescape(p.group(1))
            value = p.group(p.lastindex)
            if string_flag and p.group(2) == "true":
                args[key] = value
            elif string_flag:
                args[key] = typed(value, {"type": ["object", "array", "number", "boolean",
                                                   "null", "string"]})
            else:
                args[key] = typed(value, tools.param(name, key))
        out.append(call(name, args))
    if invoke.sub("", body).strip():
        raise Malformed("text beside the calls")
    return out


class MiniMax(Family):
    name = "minimax_m2"
    title = "MiniMax M2"

    @staticmethod
    def detect(template: str) -> bool:
        return OPEN in template or "minimax:tool_call" in template

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        args = xml_params(r, params, open_tag='<parameter name="{}">', mid="\n",
                          close="</parameter>")
        head = lit(f"{OPEN}\n<invoke name={json.dumps(name)}>\n")
        return f"{head} {args} {lit(INVOKE_END)}"

    def parser(self, *, tools: Tools, in_reasoning: bool, parse_tools: bool) -> Parser:
        block = Block(OPEN, lambda body: parse_invokes(body, tools), close=CLOSE)
        return Parser(Syntax(self.reasoning, [block]), in_reasoning=in_reasoning,
                      parse_tools=parse_tools)
