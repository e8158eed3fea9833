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

from cortex.neuron.families.base import Part, Tools
from cortex.neuron.families.family import Family
from cortex.neuron.families.grammar import Rules, lit, xml_params
from cortex.neuron.families.hermes import TOOL_CLOSE, TOOL_OPEN
from cortex.neuron.families.stream import Block
from cortex.neuron.families.xml_calls import read_calls, typed

# A value may itself hold `</parameter>` or `</function>` (code about these very tags): only
# a closing tag followed by the next opening one, or by the end, ends it.
FUNCTION = re.compile(r"<function=([^>\n]*)>(.*?)</function>(?=\s*(?:<function=|\Z))", re.S)
FUNCTION_END = "</function>\n" + TOOL_CLOSE
PARAMETER = re.compile(r"<parameter=([^>\n]*)>(.*?)</parameter>(?=\s*(?:<parameter=|\Z))",
                       re.S)


def _value(p: re.Match, schema: dict[str, Any] | None) -> Any:
    """The value between the newlines that frame it."""
    value = p.group(2)
    value = value[1:] if value.startswith("\n") else value
    return typed(value[:-1] if value.endswith("\n") else value, schema)


def parse_functions(body: str, tools: Tools) -> list[Part]:
    return read_calls(body, tools, FUNCTION, PARAMETER, value=_value)


class Qwen3Coder(Family):
    name = "qwen3_coder"
    title = "Qwen3-Coder, Qwen3.5, Nemotron 3 Nano"

    @staticmethod
    def detect(template: str) -> bool:
        return "<function=" in template and "<parameter=" in template

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        args = xml_params(r, params, open_tag="<parameter={key}>\n", mid="\n",
                          close="\n</parameter>")
        head = lit(TOOL_OPEN + "\n<function=" + name + ">\n")
        return f"{head} {args} {lit(FUNCTION_END)}"

    def blocks(self, tools: Tools) -> list[Block]:
        return [
            Block(TOOL_OPEN, lambda body: parse_functions(body, tools), close=TOOL_CLOSE),
            Block("<function=", lambda body: parse_functions(body + "</function>", tools),
                  close="</function>", keep_open=True, swallow=(TOOL_CLOSE,)),
        ]
