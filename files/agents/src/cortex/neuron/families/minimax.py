"""MiniMax M2: `<minimax:tool_call><invoke name="N"><parameter name="k">v</parameter></invoke>
</minimax:tool_call>`, values untyped; thoughts in `<think>`, which the model needs back on
the turns since the user last spoke (the template keeps `reasoning_content` there)."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from cortex.neuron.families.base import Part, Tools
from cortex.neuron.families.family import Family
from cortex.neuron.families.grammar import Rules, lit, xml_params
from cortex.neuron.families.stream import Block
from cortex.neuron.families.xml_calls import read_calls

OPEN, CLOSE = "<minimax:tool_call>", "</minimax:tool_call>"
INVOKE_END = "</invoke>\n" + CLOSE
INVOKE = re.compile(r'<invoke name="([^"]*)">(.*?)</invoke>', re.S)
PARAM = re.compile(r'<parameter name="([^"]*)">(.*?)</parameter>', re.S)


def parse_invokes(body: str, tools: Tools) -> list[Part]:
    # names and keys are attribute values, escaped as in HTML
    return read_calls(body, tools, INVOKE, PARAM, key=html.unescape)


class MiniMax(Family):
    name = "minimax_m2"
    title = "MiniMax M2"

    @staticmethod
    def detect(template: str) -> bool:
        return "minimax:tool_call" in template

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        args = xml_params(r, params, open_tag='<parameter name="{key}">', mid="\n",
                          close="</parameter>")
        head = lit(f"{OPEN}\n<invoke name={json.dumps(name)}>\n")
        return f"{head} {args} {lit(INVOKE_END)}"

    def blocks(self, tools: Tools) -> list[Block]:
        return [Block(OPEN, lambda body: parse_invokes(body, tools), close=CLOSE)]
