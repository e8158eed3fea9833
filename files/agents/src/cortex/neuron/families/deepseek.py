# ruff: noqa: RUF001, RUF002 - DeepSeek's markers are written with fullwidth bars (U+FF5C)
"""DeepSeek R1 (and its distills), V3.1 and V3.2; thoughts in `<think>` (the prompt often
opens it). R1 and V3.1 write calls between special markers, R1 with the arguments in a
fenced JSON block:

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
    ```json
    {...}
    ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>                        (R1)
    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>…  (V3.1)

V3.2 writes DSML: `<｜DSML｜function_calls><｜DSML｜invoke name="N"><｜DSML｜parameter
name="k" string="true|false">v</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜function_calls>`.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from cortex.neuron.families.base import Malformed, Part, Tools, call
from cortex.neuron.families.family import Family
from cortex.neuron.families.grammar import ANY_OBJECT, Rules, lit, xml_params
from cortex.neuron.families.stream import Block
from cortex.neuron.families.xml_calls import read_calls, typed

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
ONE_CALL = re.compile(re.escape(CALL_BEGIN) + "(.*?)" + re.escape(CALL_END), re.S)
FENCE_END = "\n```" + CALL_END + CALLS_END
FENCED = re.compile(r"\s*([^\n`]+?)\s*\n?```(?:json)?\s*(.*?)\s*```\s*$", re.S)

DSML = "｜DSML｜"
DSML_OPEN, DSML_CLOSE = f"<{DSML}function_calls>", f"</{DSML}function_calls>"
DSML_INVOKE = re.compile(f'<{DSML}invoke name="([^"]*)">(.*?)</{DSML}invoke>', re.S)
PARAM_END = f"</{DSML}parameter>"
INVOKE_END = f"</{DSML}invoke>\n{DSML_CLOSE}"
DSML_PARAM = re.compile(
    f'<{DSML}parameter name="([^"]*)" string="(true|false)">(.*?)</{DSML}parameter>', re.S)


def parse_one(text: str, tools: Tools) -> Part:
    if SEP not in text:
        raise Malformed("no separator")
    left, right = text.split(SEP, 1)
    if left.strip() == "function":  # R1: the name on the first line, then fenced JSON
        m = FENCED.match(right)
        if m is None:
            raise Malformed("expected NAME then a ```json block")
        return call(tools.check(m.group(1)), m.group(2))
    return call(tools.check(left), right.strip())


def parse_dsml(body: str, tools: Tools) -> list[Part]:
    return read_calls(body, tools, DSML_INVOKE, DSML_PARAM, key=html.unescape,
                      value=_dsml_value)


def _dsml_value(p: re.Match, schema: dict[str, Any] | None) -> Any:
    # string="true": the value is text; "false": JSON, whatever the schema says
    return p.group(3) if p.group(2) == "true" else typed(p.group(3), None)


def parse_section(body: str, tools: Tools) -> list[Part]:
    calls = [parse_one(m.group(1), tools) for m in ONE_CALL.finditer(body)]
    if ONE_CALL.sub("", body).strip():
        raise Malformed("text beside the calls")
    return calls


TOOLS_SYSTEM = (
    "You may call one or more functions to assist with the user query. The functions, as "
    "JSON signatures:\n{tools}\n\nTo call functions, write:\n" + CALLS_BEGIN + CALL_BEGIN
    + "function" + SEP + "<function-name>\n```json\n<args-json-object>\n```" + CALL_END
    + CALLS_END)


TOOLS_SYSTEM_V31 = (
    "You may call one or more functions to assist with the user query. The functions, as "
    "JSON signatures:\n{tools}\n\nTo call functions, write:\n" + CALLS_BEGIN + CALL_BEGIN
    + "<function-name>" + SEP + "<args-json-object>" + CALL_END + CALLS_END)


class DeepSeekR1(Family):
    name = "deepseek_r1"
    title = "DeepSeek R1 and its distills"

    @staticmethod
    def detect(template: str) -> bool:
        return CALLS_BEGIN in template or "<｜Assistant｜>" in template

    def describes_tools(self, template: str, *, forced: bool = False) -> bool:
        # R1's templates write earlier calls but never list the tools: chat.py does.
        return False

    def tools_system(self, tools: str) -> str:
        return TOOLS_SYSTEM.format(tools=tools)

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        head = lit(f"{CALLS_BEGIN}{CALL_BEGIN}function{SEP}{name}\n```json\n")
        return f"{head} {r.schema(params or ANY_OBJECT)} {lit(FENCE_END)}"

    def blocks(self, tools: Tools) -> list[Block]:
        return [
            Block(CALLS_BEGIN, lambda body: parse_section(body, tools), close=CALLS_END),
            # a call without the section around it
            Block(CALL_BEGIN, lambda body: [parse_one(body, tools)], close=CALL_END,
                  swallow=(CALLS_END,)),
        ]


class DeepSeekV31(DeepSeekR1):
    name = "deepseek_v3_1"
    title = "DeepSeek V3.1"

    @staticmethod
    def detect(template: str) -> bool:
        # R1 writes `tool['type']` ("function") before the separator, V3.1 the name.
        return CALLS_BEGIN in template and "tool['type']" not in template

    def tools_system(self, tools: str) -> str:
        return TOOLS_SYSTEM_V31.format(tools=tools)

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        head = lit(f"{CALLS_BEGIN}{CALL_BEGIN}{name}{SEP}")
        return f"{head} {r.schema(params or ANY_OBJECT)} {lit(CALL_END + CALLS_END)}"


class DeepSeekV32(Family):
    name = "deepseek_v3_2"
    title = "DeepSeek V3.2 (DSML)"

    @staticmethod
    def detect(template: str) -> bool:
        return "DSML" in template and "function_calls" in template

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        # Strings are bare text flagged string="true"; every other value is JSON.
        args = xml_params(r, params, open_tag=f'<{DSML}parameter name="{{key}}" '
                          'string="{text}">', mid="\n", close=PARAM_END)
        head = lit(f"{DSML_OPEN}\n<{DSML}invoke name={json.dumps(name)}>\n")
        return f"{head} {args} {lit(INVOKE_END)}"

    def blocks(self, tools: Tools) -> list[Block]:
        return [Block(DSML_OPEN, lambda body: parse_dsml(body, tools), close=DSML_CLOSE)]
