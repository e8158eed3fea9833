"""Fuzzing the neuron's chat and completion bodies: whatever a client sends, never a 500."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIELDS = ["temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens",
          "repeat_penalty", "presence_penalty", "frequency_penalty", "seed", "n", "stop",
          "stream", "tools", "tool_choice", "reasoning_effort", "enable_thinking",
          "response_format", "user", "logit_bias", "stream_options"]
ROLES = ["system", "developer", "user", "assistant", "tool", "wizard", ""]

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
parts = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]) | values},
                              optional={"text": st.text(max_size=12) | values})
tool_calls = st.lists(st.fixed_dictionaries(
    {"function": st.fixed_dictionaries({"name": st.text(max_size=6) | values},
                                       optional={"arguments": st.text(max_size=12) | values})
     | values},
    optional={"id": st.text(max_size=6) | values, "type": values}), max_size=2)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES) | values},
    optional={"content": st.text(max_size=20) | st.lists(parts, max_size=2) | values,
              "tool_calls": tool_calls | values, "tool_call_id": st.text(max_size=6) | values,
              "name": values, "reasoning_content": values}), max_size=4) | values
tools = st.lists(st.fixed_dictionaries(
    {"type": st.just("function") | values,
     "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g"]) | values},
                                       optional={"parameters": values,
                                                 "description": values}) | values}),
    max_size=2)
extra = st.dictionaries(st.sampled_from(FIELDS), values, max_size=5)


@pytest.fixture(scope="module")
def fuzz_neuron(models_dir, tmp_path_factory):
    from cortex.testing.served import serve_neuron

    s = serve_neuron(models_dir, tmp_path_factory.mktemp("fuzz-cache"))
    s.load("file:tiny-hello")
    yield s
    s.close()


def check(neuron, path: str, body: dict) -> None:
    r = neuron.http.post(neuron.url + path, data=json.dumps(body),
                         headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert r.json()["error"]["message"], r.text
    else:  # a 200 is a whole reply (a stream ends with [DONE])
        if r.headers["Content-Type"].startswith("text/event-stream"):
            assert r.text.rstrip().endswith("data: [DONE]"), r.text
        else:
            assert r.json()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=messages, tools=tools | values, extra=extra)
def test_chat_bodies_never_500(fuzz_neuron, messages, tools, extra):
    body = {"model": "tiny-hello", "messages": messages, "max_tokens": 4, **extra}
    if tools is not None:
        body["tools"] = tools
    check(fuzz_neuron, "/v1/chat/completions", body)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.text(max_size=20) | values, extra=extra)
def test_completion_bodies_never_500(fuzz_neuron, prompt, extra):
    body = {"model": "tiny-hello", "prompt": prompt, "max_tokens": 4, **extra}
    check(fuzz_neuron, "/v1/completions", body)
    check(fuzz_neuron, "/tokenize", body)


# Any code point, lone surrogates included: json.dumps escapes them as \udXXX, as a client
# in a language with UTF-16 strings may send them.
any_text = st.text(st.characters(codec=None, categories=None)
                   | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"]),
                   max_size=12)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=any_text, key=any_text, stop=st.lists(any_text, max_size=2),
       body=st.dictionaries(st.sampled_from(["model", "messages", "prompt", *FIELDS]), values,
                            max_size=4))
def test_any_text_and_any_shape_never_500(fuzz_neuron, content, key, stop, body):
    chat = {"model": "tiny-hello", "max_tokens": 4, "stop": stop,
            "messages": [{"role": "user", "content": content, key: content}]}
    check(fuzz_neuron, "/v1/chat/completions", chat)
    check(fuzz_neuron, "/v1/chat/completions", {"max_tokens": 4, **body})
