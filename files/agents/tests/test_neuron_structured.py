"""response_format: output constrained by a grammar, checked with jsonschema (real SmolLM2)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from openai import OpenAI

SCHEMAS = {
    "person": {"type": "object", "additionalProperties": False, "required": ["name", "age"],
               "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 20},
                              "age": {"type": "integer", "minimum": 0, "maximum": 150}}},
    "colours": {"type": "array", "minItems": 1, "maxItems": 3,
                "items": {"enum": ["red", "green", "blue"]}},
    "city": {"type": "object", "required": ["city", "facts", "capital"],
             "properties": {"city": {"type": "string", "maxLength": 24},
                            "capital": {"type": "boolean"},
                            "facts": {"type": "array", "maxItems": 2,
                                      "items": {"type": "string", "maxLength": 30}}}},
}
ASK = {"person": "Describe a person as JSON.", "colours": "List some colours as JSON.",
       "city": "Tell me about Paris as JSON."}


@pytest.fixture(scope="module")
def smol_dir(smollm2_file: Path, models_factory) -> Path:
    return models_factory(smollm2=True)


@pytest.fixture
def smol(neuron_factory, smol_dir):
    n = neuron_factory(models_dir=str(smol_dir), n_ctx=1024, parallel=2)
    n.load("file:smollm2")
    return n


def _ask(name: str) -> list[dict]:
    return [{"role": "user", "content": ASK[name]}]


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_openai_json_schema_output_validates(smol, name):
    client = OpenAI(base_url=smol.url + "/v1", api_key="x")
    r = client.chat.completions.create(
        model="file:smollm2", messages=_ask(name), max_tokens=200, temperature=0.7, seed=3,
        response_format={"type": "json_schema",
                         "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}})
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMAS[name])


def test_llama_cpp_shape_streaming_validates(smol):
    client = OpenAI(base_url=smol.url + "/v1", api_key="x")
    text, finish = [], None
    for chunk in client.chat.completions.create(
            model="file:smollm2", messages=_ask("person"), max_tokens=200, stream=True,
            temperature=0, extra_body={"response_format": {"type": "json_schema",
                                                           "schema": SCHEMAS["person"]}}):
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    jsonschema.validate(json.loads("".join(text)), SCHEMAS["person"])


@pytest.mark.parametrize("rf, says", [
    ("json", "expected an object"),
    ({"type": "xml"}, "unsupported type 'xml'"),
    ({"type": "json_schema"}, "needs a schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}},
     "cannot be enforced"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}},
     "cannot be enforced"),
    ({"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}, "strict"),
])
def test_bad_response_format_is_400_naming_it(neuron, rf, says):
    neuron.load("file:tiny-hello")
    r = neuron.chat("tiny-hello", response_format=rf)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "response_format" and says in err["message"], err
