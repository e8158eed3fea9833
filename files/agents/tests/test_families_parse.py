# ruff: noqa: RUF001 - DeepSeek's markers are written with fullwidth bars (U+FF5C)
"""Each family's streaming parser: canned model outputs read into content, reasoning and
tool calls, whole and as split-token streams (one character at a time, and random cuts),
including what a model gets wrong: a call cut at max_tokens, bad JSON, an unknown
function, nesting past the bound. The cases follow those llama.cpp checks in
tests/test-chat.cpp for the same formats.
"""

from __future__ import annotations

import json
import random

import pytest

from cortex.neuron.families import FAMILIES, Part, Tools
from cortex.neuron.families.base import MAX_DEPTH

ANY_ID = object()


def tool(tool_name: str, **props) -> dict:
    return {"type": "function", "function": {"name": tool_name, "parameters": {
        "type": "object", "properties": props}}}


TOOLS = Tools.of([
    tool("special_function", arg1={"type": "integer"}),
    tool("special_function_with_opt", arg1={"type": "integer"}, arg2={"type": "integer"}),
    tool("python", code={"type": "string"}),
    tool("html", markup={"type": "string"}),
    tool("get_time", city={"type": "string"}),
    tool("todo_list", todos={"type": "array"}),
    tool("set_config", config={"type": "object"}),
    tool("toggle", enabled={"type": "boolean"}),
    tool("amount", orig={"type": "number"}),
    tool("note", text={"type": "string"}, count={"type": ["integer", "null"]},
         unit={"enum": ["celsius", "fahrenheit"]}, name={"type": ["string", "null"]}),
    tool("empty_args"),
    tool("brave_search", query={"type": "string"}),
])
ARG1 = {"arg1": 1}


def C(name, args, call_id=ANY_ID):
    return (name, args, call_id)


def words(family: str, text: str, **options) -> tuple:
    """A case whose output is no call, or a broken one: it reads as the model wrote it."""
    return (family, text, {"content": text}, options)


# (family, output, expected {content, reasoning, calls}, options)
CASES = [
    # -- Hermes / Qwen3 / QwQ --------------------------------------------------------
    ("hermes", "Hello, world!\nWhat's up?", {"content": "Hello, world!\nWhat's up?"}, {}),
    ("hermes", '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n'
               "</tool_call>", {"calls": [C("special_function", ARG1)]}, {}),
    ("hermes", "<think>plan</think>\n\nHi <tool_call>{\"name\": \"python\", \"arguments\": "
               '{"code": "print(1)"}}</tool_call>',
     {"reasoning": "plan", "content": "Hi ", "calls": [C("python", {"code": "print(1)"})]}, {}),
    ("hermes", '<tool_call>{"name": "special_function", "arguments": {"arg1": 1}}</tool_call>'
               '\n<tool_call>{"name": "special_function_with_opt", "arguments": {"arg1": 1, '
               '"arg2": 2}}</tool_call>',
     {"calls": [C("special_function", ARG1),
                C("special_function_with_opt", {"arg1": 1, "arg2": 2})]}, {}),
    ("hermes", "I'm\nthinking</think>Hello", {"reasoning": "I'm\nthinking", "content": "Hello"},
     {"in_reasoning": True}),
    words("hermes", "<tool_call>not json</tool_call>"),
    words("hermes", '<tool_call>{"name": "special_function", "argu'),  # cut at max_tokens
    words("hermes", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),  # not offered
    words("hermes", '<tool_call>{"name": "special_function", "arguments": {"arg1": 1}}'
                    "</tool_call>", parse_tools=False),  # no tools offered: words
    words("hermes", '<tool_call>{"name": "special_function", "arguments": ' + "[" * 5000
          + "]" * 5000 + "}</tool_call>"),  # issue 19 item 2
    ("hermes", '<tool_call>{"name": "special_function", "arguments": "{\\"arg1\\": 1}"}'
               "</tool_call>", {"calls": [C("special_function", ARG1)]}, {}),
    # -- Qwen3-Coder / Qwen3.5 / Nemotron 3 Nano ---------------------------------------
    ("qwen3_coder", "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n"
                    "</parameter>\n</function>\n</tool_call>",
     {"calls": [C("special_function", ARG1)]}, {}),
    ("qwen3_coder", "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n"
                    "</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
                    "<function=special_function_with_opt>\n<parameter=arg1>\n1\n</parameter>\n"
                    "<parameter=arg2>\n2\n</parameter>\n</function>\n</tool_call>",
     {"calls": [C("special_function", ARG1),
                C("special_function_with_opt", {"arg1": 1, "arg2": 2})]}, {}),
    ("qwen3_coder", "<tool_call>\n<function=python>\n<parameter=code>\ndef hello():\n"
                    "    print(\"Hello, world!\")\n\nhello()\n</parameter>\n</function>\n"
                    "</tool_call>",
     {"calls": [C("python", {"code": 'def hello():\n    print("Hello, world!")\n\nhello()'})]},
     {}),
    ("qwen3_coder", "<tool_call>\n<function=python>\n<parameter=code>\n格\n</parameter>\n"
                    "</function>\n</tool_call>", {"calls": [C("python", {"code": "格"})]}, {}),
    ("qwen3_coder", "<tool_call>\n<function=html>\n<parameter=markup>\n<html>\n <head>\n"
                    "  <title>Hello!</title>\n </head>\n</html>\n</parameter>\n</function>\n"
                    "</tool_call>",
     {"calls": [C("html", {"markup": "<html>\n <head>\n  <title>Hello!</title>\n </head>\n"
                                     "</html>"})]}, {}),
    ("qwen3_coder", "<tool_call>\n<function=todo_list>\n<parameter=todos>\n"
                    '[{"item": "Check stuff", "selected": false}]\n</parameter>\n</function>\n'
                    "</tool_call>",
     {"calls": [C("todo_list", {"todos": [{"item": "Check stuff", "selected": False}]})]}, {}),
    ("qwen3_coder", "<tool_call>\n<function=note>\n<parameter=text>\n42\n</parameter>\n"
                    "<parameter=count>\n42\n</parameter>\n<parameter=unit>\ncelsius\n"
                    "</parameter>\n<parameter=name>\nhello world\n</parameter>\n</function>\n"
                    "</tool_call>",  # typed from the schema: "42" stays text where text
     {"calls": [C("note", {"text": "42", "count": 42, "unit": "celsius",
                           "name": "hello world"})]}, {}),
    ("qwen3_coder", "Let me run it.\n<function=python>\n<parameter=code>\nprint(1)\n"
                    "</parameter>\n</function>\n</tool_call>",  # its <tool_call> left out
     {"content": "Let me run it.\n", "calls": [C("python", {"code": "print(1)"})]}, {}),
    words("qwen3_coder", "<tool_call>\n<function=python>\n<parameter=code>\nprint("),  # cut
    ("qwen3_coder", "<tool_call>\n<function=python>\n<parameter=code>\nx = '</parameter>'\n"
                    "y = '</function>'\n</parameter>\n<parameter=note>\n</parameter>\n"
                    "</parameter>\n</function>\n</tool_call>",  # the tags as a value's text
     {"calls": [C("python", {"code": "x = '</parameter>'\ny = '</function>'",
                             "note": "</parameter>"})]}, {}),
    ("qwen3_coder", "<think>\nok\n</think>\n\n<tool_call>\n<function=empty_args>\n</function>"
                    "\n</tool_call>", {"reasoning": "\nok\n", "calls": [C("empty_args", {})]},
     {}),
    # -- GLM-4.5 / 4.6 / 4.7 -----------------------------------------------------------
    ("glm", "<tool_call>special_function\n<arg_key>arg1</arg_key>\n<arg_value>1</arg_value>\n"
            "</tool_call>", {"calls": [C("special_function", ARG1)]}, {}),
    ("glm", "I'm\nthinking</think><tool_call>special_function<arg_key>arg1</arg_key>"
            "<arg_value>1</arg_value></tool_call>",
     {"reasoning": "I'm\nthinking", "calls": [C("special_function", ARG1)]},
     {"in_reasoning": True}),
    ("glm", "<tool_call>special_function<arg_key>arg1</arg_key><arg_value>1</arg_value>"
            "</tool_call><tool_call>special_function_with_opt<arg_key>arg1</arg_key>"
            "<arg_value>1</arg_value><arg_key>arg2</arg_key><arg_value>2</arg_value>"
            "</tool_call>",
     {"calls": [C("special_function", ARG1),
                C("special_function_with_opt", {"arg1": 1, "arg2": 2})]}, {}),
    ("glm", "Let me read.</think><tool_call>empty_args</tool_call>",
     {"reasoning": "Let me read.", "calls": [C("empty_args", {})]}, {"in_reasoning": True}),
    ("glm", "<tool_call>get_time<arg_key>city</arg_key><arg_value>Paris</arg_value>"
            "<arg_key>extra</arg_key><arg_value>[1, 2]</arg_value></tool_call>",
     {"calls": [C("get_time", {"city": "Paris", "extra": [1, 2]})]}, {}),
    words("glm", "<tool_call>get_time"),  # cut
    # -- MiniMax M2 ----------------------------------------------------------------------
    ("minimax_m2", "\n</think>\n\nHello, world!", {"reasoning": "\n", "content": "Hello, world!"},
     {"in_reasoning": True}),
    ("minimax_m2", "Let's call a tool:\n</think>\n\n<minimax:tool_call>\n"
                   '<invoke name="empty_args">\n</invoke>\n</minimax:tool_call>',
     {"reasoning": "Let's call a tool:\n", "calls": [C("empty_args", {})]},
     {"in_reasoning": True}),
    ("minimax_m2", '<minimax:tool_call>\n<invoke name="special_function">\n<parameter '
                   'name="arg1">1</parameter>\n</invoke>\n<invoke name="python">\n<parameter '
                   'name="code">x = "a"</parameter>\n</invoke>\n</minimax:tool_call>',
     {"calls": [C("special_function", ARG1), C("python", {"code": 'x = "a"'})]}, {}),
    words("minimax_m2", '<minimax:tool_call>\n<invoke name="special_function">\n<parameter '
                        'name="arg1">1</parameter>'),  # cut
    # -- DeepSeek R1, V3.1, V3.2 ----------------------------------------------------------
    ("deepseek_r1", "</think>Hello, world!", {"content": "Hello, world!"},
     {"in_reasoning": True}),
    ("deepseek_r1", "I'm\nthinking</think>Hello", {"reasoning": "I'm\nthinking",
                                                   "content": "Hello"}, {"in_reasoning": True}),
    ("deepseek_r1", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
                    'special_function\n```json\n{"arg1": 1}```<｜tool▁call▁end｜>'
                    "<｜tool▁calls▁end｜>", {"calls": [C("special_function", ARG1)]}, {}),
    ("deepseek_r1", "<｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n```json\n"
                    '{"arg1": 1}\n```<｜tool▁call▁end｜>',  # no section around it
     {"calls": [C("special_function", ARG1)]}, {}),
    ("deepseek_v3_1", "REASONING</think>CONTENT<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>"
                      'get_time<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
                      "<｜tool▁call▁begin｜>special_function<｜tool▁sep｜>{\"arg1\": 1}"
                      "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
     {"reasoning": "REASONING", "content": "CONTENT",
      "calls": [C("get_time", {"city": "Paris"}), C("special_function", ARG1)]},
     {"in_reasoning": True}),
    ("deepseek_v3_1", "REASONING</think>\nCONTENT", {"reasoning": "REASONING",
                                                      "content": "CONTENT"},
     {"in_reasoning": True}),
    words("deepseek_v3_1", '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>'
                           '{"city": '),  # cut
    ("deepseek_v3_2", "Let me check the time</think>\n\n<｜DSML｜function_calls>\n"
                      '<｜DSML｜invoke name="get_time">\n<｜DSML｜parameter name="city" '
                      'string="true">Tokyo</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
                      "</｜DSML｜function_calls>",
     {"reasoning": "Let me check the time", "calls": [C("get_time", {"city": "Tokyo"})]},
     {"in_reasoning": True}),
    ("deepseek_v3_2", "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"toggle\">\n"
                      '<｜DSML｜parameter name="enabled" string="false">true</｜DSML｜parameter>\n'
                      "</｜DSML｜invoke>\n<｜DSML｜invoke name=\"amount\">\n<｜DSML｜parameter "
                      'name="orig" string="false">-3.14</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
                      '<｜DSML｜invoke name="set_config">\n<｜DSML｜parameter name="config" '
                      'string="false">{"theme":"dark","level":2}</｜DSML｜parameter>\n'
                      "</｜DSML｜invoke>\n</｜DSML｜function_calls>",
     {"calls": [C("toggle", {"enabled": True}), C("amount", {"orig": -3.14}),
                C("set_config", {"config": {"theme": "dark", "level": 2}})]}, {}),
    ("deepseek_v3_2", "Thinking</think>Let me call the function.\n\n<｜DSML｜function_calls>\n"
                      '<｜DSML｜invoke name="special_function">\n<｜DSML｜parameter name="arg1" '
                      'string="false">1</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
                      "</｜DSML｜function_calls>",
     {"reasoning": "Thinking", "content": "Let me call the function.\n\n",
      "calls": [C("special_function", ARG1)]}, {"in_reasoning": True}),
    # -- Kimi K2 ---------------------------------------------------------------------------
    ("kimi_k2", "<|tool_calls_section_begin|><|tool_call_begin|>functions.special_function:0"
                '<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_end|>'
                "<|tool_calls_section_end|>",
     {"calls": [C("special_function", ARG1, "functions.special_function:0")]}, {}),
    ("kimi_k2", "<think>I'm thinking about this</think>Hello, world!"
                "<|tool_calls_section_begin|><|tool_call_begin|>functions.special_function:0"
                '<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_end|>'
                "<|tool_calls_section_end|>",
     {"reasoning": "I'm thinking about this", "content": "Hello, world!",
      "calls": [C("special_function", ARG1, "functions.special_function:0")]}, {}),
    ("kimi_k2", "<|tool_calls_section_begin|><|tool_call_begin|>functions.special_function:0"
                '<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_end|><|tool_call_begin|>'
                'functions.python:1<|tool_call_argument_begin|>{"code": "print(1)"}'
                "<|tool_call_end|><|tool_call_begin|>functions.html:2<|tool_call_argument_begin|>"
                '{"markup": "<p>test</p>"}<|tool_call_end|><|tool_calls_section_end|>',
     {"calls": [C("special_function", ARG1, "functions.special_function:0"),
                C("python", {"code": "print(1)"}, "functions.python:1"),
                C("html", {"markup": "<p>test</p>"}, "functions.html:2")]}, {}),
    ("kimi_k2", "<think>I need to call two functions<|tool_call_begin|>functions.special_"
                'function:0<|tool_call_argument_begin|>{"arg1": 1}<|tool_call_begin|>'
                "functions.python:1<|tool_call_argument_begin|>{\"code\": \"print('hey')\"}",
     {"reasoning": "I need to call two functions",
      "calls": [C("special_function", ARG1, "functions.special_function:0"),
                C("python", {"code": "print('hey')"}, "functions.python:1")]}, {}),
    ("kimi_k2", "<|tool_calls_section_begin|><|tool_call_begin|>functions.empty_args:0"
                "<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
     {"calls": [C("empty_args", {}, "functions.empty_args:0")]}, {}),
    words("kimi_k2", "<|tool_calls_section_begin|><|tool_call_begin|>functions.special_"
                     'function:0<|tool_call_argument_begin|>{"arg1": '),  # cut
    # -- Mistral, Devstral, Ministral, Nemo -------------------------------------------------
    ("mistral", "[TOOL_CALLS]special_function[CALL_ID]123456789[ARGS]{\"arg1\": 1}",
     {"calls": [C("special_function", ARG1, "123456789")]}, {}),
    ("mistral", "[TOOL_CALLS]special_function[CALL_ID]000000001[ARGS]{\"arg1\": 1}"
                "[TOOL_CALLS]special_function_with_opt[CALL_ID]000000002[ARGS]"
                '{"arg1": 1, "arg2": 2}',
     {"calls": [C("special_function", ARG1, "000000001"),
                C("special_function_with_opt", {"arg1": 1, "arg2": 2}, "000000002")]}, {}),
    ("mistral", "Hello, world!\nWhat's up?[TOOL_CALLS]special_function[ARGS]{\"arg1\": 1}",
     {"content": "Hello, world!\nWhat's up?", "calls": [C("special_function", ARG1)]}, {}),
    ("mistral", '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, '
                '"id": "123456789"}]', {"calls": [C("special_function", ARG1, "123456789")]},
     {}),
    ("mistral", "[THINK]Let me think.[/THINK]The answer is 4.",
     {"reasoning": "Let me think.", "content": "The answer is 4."}, {}),
    words("mistral", '[TOOL_CALLS]special_function[ARGS]{"arg1": 1, '),  # cut
    ("mistral", '[TOOL_CALLS]special_function[ARGS]{"arg1": 1}} and more',
     {"content": "} and more", "calls": [C("special_function", ARG1)]}, {}),
    # -- Llama 3.x --------------------------------------------------------------------------
    ("llama3", "Hello, world!\nWhat's up?", {"content": "Hello, world!\nWhat's up?"}, {}),
    ("llama3", '{"name": "special_function", "parameters": {"arg1": 1}}',
     {"calls": [C("special_function", ARG1)]}, {}),
    ("llama3", '\n\n{"type": "function", "name": "special_function", "parameters": '
               '{"arg1": 1}}', {"calls": [C("special_function", ARG1)]}, {}),
    ("llama3", '{"name": "special_function", "parameters": {"arg1": 1}}; {"name": "python", '
               '"parameters": {"code": "1"}}',
     {"calls": [C("special_function", ARG1), C("python", {"code": "1"})]}, {}),
    words("llama3", '{"answer": 42}'),  # JSON, not a call
    words("llama3", 'The JSON is {"name": "special_function", "parameters": {}}'),
    ("llama3", '<|python_tag|>brave_search.call(query="weather in Paris")',
     {"calls": [C("brave_search", {"query": "weather in Paris"})]}, {}),
    ("llama3", "<|python_tag|>print('hey')", {"calls": [C("python", {"code": "print('hey')"})]},
     {}),
    # -- gpt-oss (Harmony) ---------------------------------------------------------------------
    ("harmony", "<|channel|>final<|message|>Hello, world!\nWhat's up?",
     {"content": "Hello, world!\nWhat's up?"}, {}),
    ("harmony", "<|channel|>commentary<|message|>Hello, world!",
     {"content": "Hello, world!"}, {}),
    ("harmony", "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant"
                "<|channel|>final<|message|>Hello, world!",
     {"reasoning": "I'm\nthinking", "content": "Hello, world!"}, {}),
    ("harmony", ' to=functions.special_function<|channel|>analysis<|message|>{"arg1": 1}',
     {"calls": [C("special_function", ARG1)]}, {}),
    ("harmony", "<|channel|>analysis to=functions.special_function<|message|>{\"arg1\": 1}",
     {"calls": [C("special_function", ARG1)]}, {}),
    ("harmony", " to=functions.special_function<|channel|>analysis <|constrain|>json"
                '<|message|>{"arg1": 1}', {"calls": [C("special_function", ARG1)]}, {}),
    ("harmony", "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant to="
                "functions.special_function<|channel|>commentary json<|message|>{\"arg1\": 1}",
     {"reasoning": "I'm\nthinking", "calls": [C("special_function", ARG1)]}, {}),
    ("harmony", "<|channel|>analysis<|message|>I will run python<|end|><|start|>assistant "
                "to=container.exec<|channel|>commentary<|message|>python3 -c 'print(1)'",
     {"reasoning": "I will run python"}, {}),  # the model's own builtin: not the client's
    ("harmony", "<|channel|>commentary to=assistant<|channel|>analysis<|message|>I'm\n"
                "thinking<|end|><|start|>assistant<|channel|>final<|message|>Hello",
     {"reasoning": "I'm\nthinking", "content": "Hello"}, {}),
    ("harmony", "Plain words, no header.", {"content": "Plain words, no header."}, {}),
    words("harmony", "<|channel|>commentary to=functions.special_function <|constrain|>json"
                     '<|message|>{"arg1": '),  # cut
    ("harmony", "<|channel|>final <|constrain|>json<|message|>{\"amount\": 123.45}",
     {"content": '{"amount": 123.45}'}, {}),
]


def run(family: str, chunks: list[str], in_reasoning=False, parse_tools=True,
        stream_args=False) -> dict:
    parser = FAMILIES[family].parser(tools=TOOLS, in_reasoning=in_reasoning,
                                     parse_tools=parse_tools, stream_args=stream_args)
    parts: list[Part] = []
    for c in chunks:
        parts += parser.feed(c)
    parts += parser.finish()
    return read(parts, parser.tool_calls)


def read(parts: list[Part], tool_calls: int) -> dict:
    """The parts as a client puts them together: a streamed call's arguments joined."""
    out: dict = {"content": "", "reasoning": "", "calls": []}
    calls = []
    for p in parts:
        if p.kind in ("tool_call", "call_start"):
            calls.append([p.name, p.arguments, p.call_id])
        elif p.kind == "call_args":
            calls[-1][1] += p.text
        else:
            out[p.kind] += p.text
    out["calls"] = [(name, arguments(args), call_id) for name, args, call_id in calls]
    assert tool_calls == len(out["calls"])
    return out


def arguments(text: str):
    """A call's arguments; a streamed call cut short keeps them as written."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def splits(text: str, how: str) -> list[str]:
    if how == "whole":
        return [text]
    if how == "chars":
        return list(text)
    rng = random.Random(len(text))
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 12))) if len(text) > 1 \
        else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def ids(case) -> str:
    family, text, _, _ = case
    return f"{family}:{text[:40]!r}"


@pytest.mark.parametrize("how", ["whole", "chars", "random"])
@pytest.mark.parametrize("case", CASES, ids=[ids(c) for c in CASES])
def test_output_reads_as_the_family_writes_it(case, how):
    family, text, expected, options = case
    if how == "chars" and len(text) > 2000:
        how = "random"
    got = run(family, splits(text, how), **options)
    assert got["content"] == expected.get("content", "")
    assert got["reasoning"] == expected.get("reasoning", "")
    assert len(got["calls"]) == len(expected.get("calls", []))
    for (name, args, call_id), (want_name, want_args, want_id) in zip(
            got["calls"], expected.get("calls", []), strict=True):
        assert (name, args) == (want_name, want_args)
        assert call_id if want_id is ANY_ID else call_id == want_id


# Where a stream's parser (stream_args) reads a case otherwise: a call whose arguments had
# begun to go out cannot turn back into words, so one cut short stands as written.
STREAMED = {
    '[TOOL_CALLS]special_function[ARGS]{"arg1": 1, ': {
        "calls": [C("special_function", '{"arg1": 1, ')]},
    "<|channel|>commentary to=functions.special_function <|constrain|>json"
    '<|message|>{"arg1": ': {"calls": [C("special_function", '{"arg1": ')]},
}


@pytest.mark.parametrize("how", ["chars", "random"])
@pytest.mark.parametrize("case", CASES, ids=[ids(c) for c in CASES])
def test_a_stream_reads_each_case_the_same_as_arguments_go_out(case, how):
    family, text, expected, options = case
    expected = STREAMED.get(text, expected)
    if how == "chars" and len(text) > 2000:
        how = "random"
    got = run(family, splits(text, how), stream_args=True, **options)
    assert got["content"] == expected.get("content", "")
    assert got["reasoning"] == expected.get("reasoning", "")
    assert [c[:2] for c in got["calls"]] == [c[:2] for c in expected.get("calls", [])]


# The families whose calls' JSON arguments go out as they come in a stream: the output,
# and where in it the first call's arguments end.
ARGS = '{"arg1": 1, "more": {"s": "a}\\"b", "l": [1, [2]]}}'
STREAMING = [
    ("hermes", f'<tool_call>\n{{"name": "special_function", "arguments": {ARGS}}}\n</tool_call>'),
    ("generic", f'<tool_call>{{"name": "special_function", "arguments": {ARGS}}}</tool_call>'),
    ("mistral", f"[TOOL_CALLS]special_function[CALL_ID]123456789[ARGS]{ARGS}"),
    ("llama3", f'{{"type": "function", "name": "special_function", "parameters": {ARGS}}}'),
    ("harmony", "<|channel|>commentary to=functions.special_function <|constrain|>json"
                f"<|message|>{ARGS}<|call|>"),
]


@pytest.mark.parametrize("family, text", STREAMING, ids=[f for f, _ in STREAMING])
def test_a_calls_arguments_go_out_as_they_come(family, text):
    parser = FAMILIES[family].parser(tools=TOOLS, in_reasoning=False, parse_tools=True,
                                     stream_args=True)
    ends = text.index(ARGS) + len(ARGS)
    parts: list[Part] = []
    for c in text[:ends]:
        parts += parser.feed(c)
    # the arguments have all gone out before the call's end is seen, in many pieces
    assert [p.kind for p in parts[:2]] == ["call_start", "call_args"]
    assert parts[0].name == "special_function" and parts[0].call_id
    assert "".join(p.text for p in parts if p.kind == "call_args") == ARGS
    assert sum(p.kind == "call_args" for p in parts) == len(ARGS)
    parts += parser.feed(text[ends:]) + parser.finish()
    assert read(parts, parser.tool_calls)["calls"] == [
        ("special_function", json.loads(ARGS), parts[0].call_id)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_output_breaks_a_parser(family):
    """Fuzz: any text, cut anywhere, is read without an exception, and nothing the model
    wrote outside a call is lost (every character is content, reasoning or in a call)."""
    markers = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<function=", "{", "}",
               "[TOOL_CALLS]", "[ARGS]", "<|channel|>", "<|message|>", "<|end|>", "<|start|>",
               '"', "\\", "<|tool_call_begin|>", "<minimax:tool_call>", "<arg_key>", "\n",
               "<｜tool▁calls▁begin｜>", "<|python_tag|>", "[", "]", "x", "é", " to="]
    rng = random.Random(family)
    for _ in range(300):
        text = "".join(rng.choice(markers) for _ in range(rng.randint(1, 40)))
        for how in ("whole", "chars", "random"):
            got = run(family, splits(text, how), in_reasoning=rng.random() < 0.2,
                      stream_args=rng.random() < 0.5)
            if not got["calls"] and family != "harmony":
                # markers aside (thought markers are dropped), every character survives
                kept = got["content"] + got["reasoning"]
                for ch in "x\"é\\":
                    assert kept.count(ch) == text.count(ch), (text, got)


def test_nesting_past_the_bound_is_text_and_never_raises():
    deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    text = f'<tool_call>{{"name": "special_function", "arguments": {{"a": {deep}}}}}</tool_call>'
    assert run("hermes", [text])["content"] == text
    # a stream's too: one that had begun to go out ends where the bound is passed
    assert run("hermes", [text], stream_args=True)["content"] == text
    got = run("hermes", list(text), stream_args=True)
    assert [c[:2] for c in got["calls"]] == [("special_function",
                                              '{"a": ' + "[" * (MAX_DEPTH - 1))]
    ok = "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2)
    text = f'<tool_call>{{"name": "special_function", "arguments": {{"a": {ok}}}}}</tool_call>'
    assert len(run("hermes", [text])["calls"]) == 1
    # the JSON-ended blocks (Mistral, Llama) bound it as they scan
    text = "[TOOL_CALLS]special_function[ARGS]" + "{\"a\":" * 5000 + "1" + "}" * 5000
    got = run("mistral", [*text[:200], text[200:]])
    assert not got["calls"] and got["content"] == text


def test_a_long_call_streams_in_linear_time():
    """A 400 KB argument, one character a feed: the parser resumes its searches."""
    code = "x = 1\n" * 70000
    text = ("<tool_call>\n<function=python>\n<parameter=code>\n" + code
            + "</parameter>\n</function>\n</tool_call>")
    got = run("qwen3_coder", [text[i:i + 3] for i in range(0, len(text), 3)])
    assert got["calls"][0][1]["code"] == code[:-1]
    text = "[TOOL_CALLS]python[ARGS]" + json.dumps({"code": code})
    got = run("mistral", [text[i:i + 3] for i in range(0, len(text), 3)])
    assert got["calls"][0][1]["code"] == code
