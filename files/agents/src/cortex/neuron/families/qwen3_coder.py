"""Qwen3-Coder, Qwen3.5, Nemotron 3 Nano: XML-ish calls with untyped values,

    <tool_call>
    <function=NAME>
    <parameter=KEY>
    value
    </parameter>
    </function>
    </tool_call>

Values are bare text, typed from the tool's schema. The models sometimes leave out the
opening `<tool_call>` (and then write a stray `</tool_call>`): `<function=` opens a call too.
"""

from __future__ import annotations

import re
from typing import Any

from cortex.neuron.families.base import Family, Malformed, Part, Tools, call, typed
from cortex.neuron.families.grammar import Rules, lit, xml_params
from cortex.neuron.families.hermes import TOOL_CLOSE, TOOL_OPEN
from cortex.neuron.families.stream import Block, Parser, Syntax

FUNCTION = re.compile(r"<function=([^>\n]*)>(.*?)</function>", re.S)
FUNCTION_END = "</function>\n" + TOOL_CLOSE
PARAMETER = re.compile(r"<parameter=([^>\n]*)>(.*?)</parameter>", re.S)


def parse_functions(body: str, tools: Tools) -> list[Part]:
    out = []
    for m in FUNCTION.finditer(body):
        name = tools.check(m.group(1))
        args = {}
        inner = PARAMETER.sub("", m.group(2))
        if inner.strip():
            raise Malformed("text between parameters")
        for p in PARAMETER.finditer(m.group(2)):
            key = p.group(1).strip()
            value = p.group(2)
            value = value[1:] if value.startswith("\n") else value
            value = value[:-1] if value.endswith("\n") else value
            args[key] = typed(value, tools.param(name, key))
        out.append(call(name, args))
    if FUNCTION.sub("", body).strip():
        raise Malformed("text beside the calls")
    return out


class Qwen3Coder(Family):
    name = "qwen3_coder"
    title = "Qwen3-Coder, Qwen3.5, Nemotron 3 Nano"

    @staticmethod
    def detect(template: str) -> bool:
        return "<function=" in template and "<parameter=" in template

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        args = xml_params(r, params, open_tag="<parameter={}>\n", mid="\n",
                          close="\n</parameter>")
        head = lit(TOOL_OPEN + "\n<function=" + name + ">\n")
        return f"{head} {args} {lit(FUNCTION_END)}"

    def parser(self, *, tools: Tools, in_reasoning: bool, parse_tools: bool) -> Parser:
        blocks = [
            Block(TOOL_OPEN, lambda body: parse_functions(body, tools), close=TOOL_CLOSE),
            Block("<function=", lambda body: parse_functions(body + "</function>", tools),
                  close="</function>", keep_open=True, swallow=(TOOL_CLOSE,)),
        ]
        return Parser(Syntax(self.reasoning, blocks), in_reasoning=in_reasoning,
                      parse_tools=parse_tools)
