# ruff: noqa: RUF001 - DeepSeek's markers are written with fullwidth bars (U+FF5C)
"""A forced call's grammar in each family's own syntax, walked character by character by
llama.cpp's grammar sampler: the family's call (as its parser reads it) is admitted, a
call to another tool, arguments against the schema, and words after the call are not.
"""

from __future__ import annotations

import ctypes
import json
import math
from pathlib import Path

import llama_cpp
import pytest

from cortex.neuron import forced_tools
from cortex.neuron.chat import Prompt
from cortex.neuron.families import FAMILIES, Tools
from test_forced_tools_grammar import Walker, tiny  # noqa: F401 - the model, a fixture

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


class ByteWalker(Walker):
    """The walker of test_forced_tools_grammar, fed the byte tokens of a character outside
    ASCII (DeepSeek's fullwidth bars; its "▁", which the tiny vocabulary would read as a
    space): the tiny vocabulary's tokens 3..258 are the bytes."""

    def accepts(self, grammar: str, text: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        assert sampler, grammar
        data = (llama_cpp.llama_token_data * 1)()
        one = llama_cpp.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
        tokens = [t for c in text for t in (
            self.model.tokenize(c.encode(), False, False) if c.isascii()
            else [3 + b for b in c.encode()])]
        try:
            for token in [*tokens, self.eos]:
                data[0].id, data[0].logit, data[0].p = token, 1.0, 0.0
                llama_cpp.llama_sampler_apply(sampler, ctypes.byref(one))
                if not math.isfinite(data[0].logit):
                    return False
                llama_cpp.llama_sampler_accept(sampler, token)
            return True
        finally:
            llama_cpp.llama_sampler_free(sampler)


@pytest.fixture(scope="module")
def walker(models_dir: Path):
    w = ByteWalker(models_dir / "tiny-hello.gguf")
    yield w
    w.model.close()


def grammar(tiny, family: str, in_reasoning=False, **body) -> str:  # noqa: F811
    prompt = Prompt("", [1], in_reasoning=in_reasoning, tools=True, family=FAMILIES[family])
    tools = [WEATHER, TIME]
    return forced_tools.grammar_for(dict(body, tools=tools), list(enumerate(tools)), tiny,
                                    prompt)


def test_every_family_has_a_call_here():
    assert sorted(CALLS) == sorted(FAMILIES)


@pytest.mark.parametrize("family", sorted(CALLS))
def test_the_familys_own_call_is_admitted_and_read(tiny, walker, family):  # noqa: F811
    g = grammar(tiny, family, parallel_tool_calls=False)
    call = CALLS[family]
    assert walker.accepts(g, call)
    # what the grammar writes, the family's parser reads
    parser = FAMILIES[family].parser(tools=Tools.of([WEATHER, TIME]), in_reasoning=False,
                                     parse_tools=True)
    parts = parser.feed(call) + parser.finish()
    assert [(p.name, json.loads(p.arguments)) for p in parts if p.kind == "tool_call"] == [
        ("get_weather", {"city": "Paris", "days": 2})]


@pytest.mark.parametrize("family", sorted(CALLS))
def test_only_calls_that_follow_the_schema(tiny, walker, family):  # noqa: F811
    g = grammar(tiny, family, parallel_tool_calls=False)
    call = CALLS[family]
    assert not walker.accepts(g, "")
    assert not walker.accepts(g, "Sure. " + call)  # no words before the call
    assert not walker.accepts(g, call + " Done.")  # nor after it
    assert not walker.accepts(g, call.replace("get_weather", "get_wether"))
    assert not walker.accepts(g, call.replace("2", "two"))  # days is an integer


@pytest.mark.parametrize("family", sorted(CALLS))
def test_a_tool_without_a_schema_takes_any_arguments(tiny, walker, family):  # noqa: F811
    g = grammar(tiny, family)
    parser = FAMILIES[family].parser(tools=Tools.of([WEATHER, TIME]), in_reasoning=False,
                                     parse_tools=True)
    call = CALLS[family].replace("get_weather", "get_time")
    if family not in ("qwen3_coder", "glm", "minimax_m2", "deepseek_v3_2"):
        assert walker.accepts(g, call)
        parts = parser.feed(call) + parser.finish()
        assert [p.name for p in parts if p.kind == "tool_call"] == ["get_time"]


def test_a_thought_may_come_first_in_the_familys_markers(tiny, walker):  # noqa: F811
    g = grammar(tiny, "mistral", in_reasoning=True)
    assert walker.accepts(g, "Let me see.[/THINK]" + CALLS["mistral"])
    g = grammar(tiny, "harmony")  # gpt-oss always reasons: an analysis message may lead
    assert walker.accepts(g, "<|channel|>analysis<|message|>Paris it is.<|end|><|start|>"
                             "assistant" + CALLS["harmony"])
    assert walker.accepts(g, CALLS["harmony"])
    assert walker.accepts(g, CALLS["harmony"].replace(" <|constrain|>json", " json"))


def test_parallel_calls_are_joined_as_the_family_joins_them(tiny, walker):  # noqa: F811
    for family, joiner in (("hermes", "\n"), ("mistral", ""), ("llama3", "; "),
                           ("qwen3_coder", "\n"), ("kimi_k2", "")):
        g = grammar(tiny, family)
        assert walker.accepts(g, CALLS[family] + joiner + CALLS[family]), family
        g = grammar(tiny, family, parallel_tool_calls=False)
        assert not walker.accepts(g, CALLS[family] + joiner + CALLS[family]), family
    g = grammar(tiny, "harmony")  # one a turn: <|call|> ends the generation
    assert not walker.accepts(g, CALLS["harmony"] + CALLS["harmony"])
