"""The forced-call grammar, walked character by character by llama.cpp's own grammar sampler.

What a reply may be, checked on texts written to the edge of the rules rather than on what
a model happens to sample: the thought ends at the first `</think>`, names and arguments
follow the tools, nothing may follow the last call.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex.neuron import forced_tools
from cortex.neuron.chat import Prompt
from cortex.neuron.families.family import THINK_CLOSE

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["city"],
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}}}}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no schema: any object
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TIME_CALL = '<tool_call>{"name":"get_time","arguments":{"tz":["UTC",1,{"a":null}]}}</tool_call>'


def grammar(tiny_model, tools=(WEATHER, TIME), *, in_reasoning=False, template=None, **body):
    """The grammar of a forced call to one of `tools`; `template`: the model's, for once."""
    original = tiny_model.metadata["tokenizer.chat_template"]
    tiny_model.metadata["tokenizer.chat_template"] = template or original
    try:
        prompt = Prompt("", [1], in_reasoning=in_reasoning, tools=True)
        return forced_tools.grammar_for(dict(body, tools=list(tools)), list(enumerate(tools)),
                                        tiny_model, prompt)
    finally:
        tiny_model.metadata["tokenizer.chat_template"] = original


@pytest.mark.parametrize("text, ok", [
    (CALL, True),
    (TIME_CALL, True),
    (CALL.replace("\n", ""), True),
    (CALL + "\n" + TIME_CALL, True),  # parallel by default
    (CALL + TIME_CALL, True),
    ("", False),
    ("Sure! " + CALL, False),  # no words before the call
    (CALL + "\nDone.", False),  # nor after it
    (CALL + "\n", False),
    (CALL.replace("get_weather", "get_wether"), False),  # an offered name only
    (CALL.replace('"Paris"', "42"), False),  # arguments follow the schema
    (CALL.replace('{"city": "Paris"}', '{"city": "Paris", "x": 1}'), False),
    (CALL.replace('{"city": "Paris"}', '{"unit": "C"}'), False),  # required field
    (CALL.replace('"Paris"}', '"Paris", "unit": "K"}'), False),  # enum
    (CALL.replace('"Paris"', '"Pa\nris"'), False),  # raw control character in a string
    (CALL.replace('"Paris"', '"Pa\\nris"'), True),
    (TIME_CALL.replace('"tz":["UTC",1,{"a":null}]', '"n":1e5'), True),
    (TIME_CALL.replace('"tz":["UTC",1,{"a":null}]', '"n":1e500'), False),  # not a double
    ('<tool_call>{"name":"get_time","arguments":["tz"]}</tool_call>', False),  # not an object
    ("<think>hmm</think>" + CALL, False),  # this template knows no thought
])
def test_what_a_forced_reply_may_be(tiny_model, grammar_walker, text, ok):
    assert grammar_walker.accepts(grammar(tiny_model), text) is ok


def test_one_call_when_parallel_calls_are_off(tiny_model, grammar_walker):
    g = grammar(tiny_model, parallel_tool_calls=False)
    assert grammar_walker.accepts(g, CALL)
    assert not grammar_walker.accepts(g, CALL + "\n" + TIME_CALL)


THINKS = "{% if enable_thinking %}<think>{% endif %}"


@pytest.mark.parametrize("text, optional, opened, off", [
    (CALL, True, False, True),
    ("<think>Paris, so: weather.</think>\n\n" + CALL, True, True, False),
    ("<think>a < b and </thin k></think>" + CALL, True, True, False),
    ("<think>one</think> two</think>" + CALL, False, False, False),  # the first one ends it
    ("<think>unclosed" + CALL, False, False, False),
    ("<think></think>\n\n\n" + CALL, False, False, False),  # at most two newlines after it
    ("Paris, so: weather.</think>\n" + CALL, False, True, False),
    ("</think>" + CALL, False, True, False),
])
def test_a_thought_may_come_first_where_the_model_reasons(tiny_model, grammar_walker, text,
                                                         optional, opened, off):
    def accepts(**how) -> bool:
        return grammar_walker.accepts(grammar(tiny_model, template=THINKS, **how), text)

    assert accepts() is optional
    assert accepts(in_reasoning=True) is opened
    assert accepts(enable_thinking=False) is off


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from([*"</think>", "a", " ", "\n"]), max_size=24))
def test_a_thought_is_any_text_up_to_the_first_close(tiny_model, grammar_walker, thought):
    g = grammar(tiny_model, in_reasoning=True, template=THINKS)
    text = thought + THINK_CLOSE + CALL
    assert grammar_walker.accepts(g, text) is (THINK_CLOSE not in thought)


def test_tools_sharing_a_defs_name_keep_their_own(tiny_model, grammar_walker):
    def tool(name: str, point: dict) -> dict:
        return {"type": "function", "function": {"name": name, "parameters": {
            "type": "object", "required": ["p"], "$defs": {"Point": point},
            "properties": {"p": {"$ref": "#/$defs/Point"}}}}}

    xy = {"type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}}
    ll = {"type": "object", "required": ["lat"], "properties": {"lat": {"type": "number"}}}
    g = grammar(tiny_model, [tool("plot", xy), tool("route", ll)])

    def call(name: str, args: dict) -> str:
        return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"

    assert grammar_walker.accepts(g, call("plot", {"p": {"x": 1}}))
    assert grammar_walker.accepts(g, call("route", {"p": {"lat": 1.5}}))
    assert not grammar_walker.accepts(g, call("route", {"p": {"x": 1}}))
    assert not grammar_walker.accepts(g, call("plot", {"p": {"lat": 1.5}}))
