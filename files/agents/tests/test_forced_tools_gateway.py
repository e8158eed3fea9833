"""A forced tool call end to end: the official SDKs → the real gateway → a real neuron.

tiny-hello answers in prose, so every tool call below is the neuron's grammar at work.
"""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest

from cortex.gateway.config import ModelEntry

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
          "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 12},
                         "unit": {"enum": ["celsius", "fahrenheit"]},
                         "days": {"type": "array", "maxItems": 3,
                                  "items": {"type": "integer"}}}}
TIME = {"type": "object", "additionalProperties": False, "required": ["tz"],
        "properties": {"tz": {"enum": ["UTC", "CET"]}}}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def gw(neuron_factory, gateway_factory):
    # The tools' description takes a few hundred of the tiny vocabulary's tokens.
    return gateway_factory({"n1": neuron_factory(n_ctx=2048)}, [ModelEntry(id="tiny-hello")])


def test_anthropic_any_and_tool_give_a_valid_tool_use(gw):
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    tools = [{"name": "get_weather", "description": "Weather.", "input_schema": SCHEMA},
             {"name": "get_time", "description": "Time.", "input_schema": TIME}]
    schemas = {t["name"]: t["input_schema"] for t in tools}
    m = client.messages.create(model="tiny-hello", max_tokens=400, messages=HI, tools=tools,
                               tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert m.stop_reason == "tool_use"
    (block,) = m.content
    assert block.type == "tool_use"
    jsonschema.validate(block.input, schemas[block.name])
    with client.messages.stream(model="tiny-hello", max_tokens=400, messages=HI, tools=tools,
                                tool_choice={"type": "tool", "name": "get_time",
                                             "disable_parallel_tool_use": True}) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    # One call: with parallel calls allowed a random model may repeat them to max_tokens.
    (block,) = final.content
    assert block.type == "tool_use" and block.name == "get_time"
    jsonschema.validate(block.input, TIME)


def test_responses_tool_choice_required_gives_a_valid_function_call(gw):
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    tools = [{"type": "function", "name": "get_weather", "description": "Weather.",
              "parameters": SCHEMA, "strict": True}]
    r = client.responses.create(model="tiny-hello", input="Hi", tools=tools,
                                tool_choice="required", parallel_tool_calls=False,
                                max_output_tokens=400, temperature=1.0)
    assert r.status == "completed"
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), SCHEMA)
    assert not [o for o in r.output if o.type == "message"]
