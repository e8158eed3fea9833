# ruff: noqa: RUF001 - DeepSeek's markers are written with fullwidth bars (U+FF5C)
"""A forced call's grammar in each family's own syntax, walked character by character by
llama.cpp's grammar sampler: the family's call (as its parser reads it) is admitted, a
call to another tool, arguments against the schema, and words after the call are not.
"""

from __future__ import annotations

import json

import pytest

from cortex.neuron import forced_tools
from cortex.neuron.chat import Prompt
from cortex.neuron.families import FAMILIES, Tools

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city"],
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no schema: any object
ARGS = '{"city": "Paris", "days": 2}'
DS = "｜DSML｜"
CALLS = {
    "hermes": f'<tool_call>\n{{"name": "get_weather", "arguments": {ARGS}}}\n</tool_call>',
    "generic": f'<tool_call>{{"name": "get_weather", "arguments": {ARGS}}}</tool_call>',
    "qwen3_coder": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
                   "</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>",
    "glm": "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
           "<arg_key>days</arg_key><arg_value>2</arg_value></tool_call>",
    "minimax_m2": '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">'
                  'Paris</parameter>\n<parameter name="days">2</parameter>\n</invoke>\n'
                  "</minimax:tool_call>",
    "deepseek_r1": "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
                   f"```json\n{ARGS}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "deepseek_v3_1": "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
                     f"{ARGS}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "deepseek_v3_2": f'<{DS}function_calls>\n<{DS}invoke name="get_weather">\n<{DS}parameter '
                     f'name="city" string="true">Paris</{DS}parameter>\n<{DS}parameter '
                     f'name="days" string="false">2</{DS}parameter>\n</{DS}invoke>\n'
                     f"</{DS}function_calls>",
    "kimi_k2": "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
               f"<|tool_call_argument_begin|>{ARGS}<|tool_call_end|><|tool_calls_section_end|>",
    "mistral": f"[TOOL_CALLS]get_weather[ARGS]{ARGS}",
    "llama3": f'{{"name": "get_weather", "parameters": {ARGS}}}',
    "harmony": "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
               + ARGS,
}


def grammar(tiny_model, family: str, in_reasoning=False, **body) -> str:
    prompt = Prompt("", [1], in_reasoning=in_reasoning, tools=True, family=FAMILIES[family])
    tools = [WEATHER, TIME]
    return forced_tools.grammar_for(dict(body, tools=tools), list(enumerate(tools)), tiny_model,
                                    prompt)


def test_every_family_has_a_call_here():
    assert sorted(CALLS) == sorted(FAMILIES)


@pytest.mark.parametrize("family", sorted(CALLS))
def test_the_familys_own_call_is_admitted_and_read(tiny_model, grammar_walker, family):
    g = grammar(tiny_model, family, parallel_tool_calls=False)
    call = CALLS[family]
    assert grammar_walker.accepts(g, call)
    # what the grammar writes, the family's parser reads
    parser = FAMILIES[family].parser(tools=Tools.of([WEATHER, TIME]), in_reasoning=False,
                                     parse_tools=True)
    parts = parser.feed(call) + parser.finish()
    assert [(p.name, json.loads(p.arguments)) for p in parts if p.kind == "tool_call"] == [
        ("get_weather", {"city": "Paris", "days": 2})]


@pytest.mark.parametrize("family", sorted(CALLS))
def test_only_calls_that_follow_the_schema(tiny_model, grammar_walker, family):
    g = grammar(tiny_model, family, parallel_tool_calls=False)
    call = CALLS[family]
    assert not grammar_walker.accepts(g, "")
    assert not grammar_walker.accepts(g, "Sure. " + call)  # no words before the call
    assert not grammar_walker.accepts(g, call + " Done.")  # nor after it
    assert not grammar_walker.accepts(g, call.replace("get_weather", "get_wether"))
    assert not grammar_walker.accepts(g, call.replace("2", "two"))  # days is an integer


@pytest.mark.parametrize("family", sorted(CALLS))
def test_a_tool_without_a_schema_takes_any_arguments(tiny_model, grammar_walker, family):
    g = grammar(tiny_model, family)
    parser = FAMILIES[family].parser(tools=Tools.of([WEATHER, TIME]), in_reasoning=False,
                                     parse_tools=True)
    call = CALLS[family].replace("get_weather", "get_time")
    assert grammar_walker.accepts(g, call)
    parts = parser.feed(call) + parser.finish()
    assert [p.name for p in parts if p.kind == "tool_call"] == ["get_time"]


def test_a_thought_may_come_first_in_the_familys_markers(tiny_model, grammar_walker):
    g = grammar(tiny_model, "mistral", in_reasoning=True)
    assert grammar_walker.accepts(g, "Let me see.[/THINK]" + CALLS["mistral"])
    g = grammar(tiny_model, "harmony")  # gpt-oss always reasons: an analysis message may lead
    assert grammar_walker.accepts(g, "<|channel|>analysis<|message|>Paris it is.<|end|><|start|>"
                             "assistant" + CALLS["harmony"])
    assert grammar_walker.accepts(g, CALLS["harmony"])
    assert grammar_walker.accepts(g, CALLS["harmony"].replace(" <|constrain|>json", " json"))


def test_parallel_calls_are_joined_as_the_family_joins_them(tiny_model, grammar_walker):
    for family, joiner in (("hermes", "\n"), ("mistral", ""), ("llama3", "; "),
                           ("qwen3_coder", "\n"), ("kimi_k2", "")):
        g = grammar(tiny_model, family)
        assert grammar_walker.accepts(g, CALLS[family] + joiner + CALLS[family]), family
        g = grammar(tiny_model, family, parallel_tool_calls=False)
        assert not grammar_walker.accepts(g, CALLS[family] + joiner + CALLS[family]), family
    g = grammar(tiny_model, "harmony")  # one a turn: <|call|> ends the generation
    assert not grammar_walker.accepts(g, CALLS["harmony"] + CALLS["harmony"])
