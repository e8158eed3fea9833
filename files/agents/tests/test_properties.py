"""Property tests: the Anthropic <-> OpenAI translation and the config parsers.

Any input ends in a result or in the error made for it (a 4xx ApiError, a ConfigError):
never another exception, which would reach a client as a 500 or stop a service with a
traceback instead of the file, the key and the problem.
"""

from __future__ import annotations

import dataclasses
import json
import typing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex.core.config import ConfigError, build
from cortex.core.errors import ApiError
from cortex.gateway.anthropic import translate
from cortex.gateway.anthropic.stream import Converter
from cortex.gateway.config import (
    EntitlementsSection,
    EvictionSection,
    GatewayConfig,
    GatewaySection,
    KeyEntry,
    ModelEntry,
    ModelsConfig,
    NeuronEntry,
)
from cortex.neuron.config import AdmissionConfig, HubConfig, NeuronConfig

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
SCALARS = (st.none() | st.booleans() | st.integers(-2**40, 2**40)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(TEXT, inner, max_size=3), max_leaves=12)


def typed_block() -> st.SearchStrategy[dict[str, typing.Any]]:
    kinds = st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking",
                             "document", "nonsense"])
    fields = st.dictionaries(st.sampled_from(["text", "id", "name", "input", "content",
                                              "tool_use_id", "source", "thinking"]), JSON,
                             max_size=4)
    return st.builds(lambda kind, rest: {"type": kind, **rest}, kinds, fields)


TEXT_BLOCK = st.builds(lambda t: {"type": "text", "text": t}, TEXT)
# Mostly well-formed, so that both the translation and its refusals are exercised.
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]) | st.sampled_from(["system", "", "x"])
     | JSON},
    optional={"content": TEXT | st.lists(TEXT_BLOCK, max_size=2)
              | st.lists(typed_block(), max_size=3) | JSON})
def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(good, good, good, bad)


BODY = st.fixed_dictionaries({
    "model": mostly(st.just("m"), JSON),
    "max_tokens": mostly(st.integers(1, 100), st.integers(-5, 10**6) | JSON),
    "messages": mostly(st.lists(MESSAGE, min_size=1, max_size=4), JSON),
}, optional={
    "system": TEXT | st.lists(typed_block(), max_size=2) | JSON,
    "tools": st.lists(st.dictionaries(st.sampled_from(["name", "description",
                                                       "input_schema", "type"]), JSON,
                                      max_size=4), max_size=2) | JSON,
    "tool_choice": st.dictionaries(st.sampled_from(["type", "name"]), JSON, max_size=2)
                   | JSON,
    "stop_sequences": st.lists(TEXT, max_size=2) | JSON,
    "temperature": JSON, "top_p": JSON, "top_k": JSON, "stream": JSON,
    "thinking": st.dictionaries(st.sampled_from(["type", "budget_tokens"]), JSON)
                | JSON,
    "output_config": st.dictionaries(st.sampled_from(["format", "effort"]), JSON) | JSON,
})


@SETTINGS
@given(BODY)
def test_any_anthropic_body_translates_or_is_a_4xx(body):
    try:
        out = translate.to_openai(body)
    except ApiError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.message)
        return
    assert isinstance(out["messages"], list)
    json.dumps(out)  # what goes to the neuron can always be sent


TURN_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                    max_size=24).filter(str.strip)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), TURN_TEXT), min_size=1,
                max_size=6), TURN_TEXT)
def test_every_word_of_a_conversation_reaches_the_neuron_in_order(turns, system):
    body = {"model": "m", "max_tokens": 8, "system": system,
            "messages": [{"role": role, "content": [{"type": "text", "text": text}]}
                         for role, text in turns]}
    out = translate.to_openai(body)
    assert out["messages"][0]["role"] == "system" and system in _text(out["messages"][0])
    joined = "\n".join(_text(m) for m in out["messages"][1:])
    at = 0
    for _, text in turns:
        found = joined.find(text, at)
        assert found >= 0, (text, joined)
        at = found + len(text)


def _text(message: dict[str, typing.Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


CHUNK = st.one_of(
    st.builds(lambda t: {"choices": [{"index": 0, "delta": {"content": t}}]}, TEXT),
    st.builds(lambda t: {"choices": [{"index": 0, "delta": {"reasoning_content": t}}]}, TEXT),
    st.builds(lambda i, name, args: {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": i, "id": f"call_{i}", "type": "function",
         "function": {"name": name, "arguments": args}}]}}]},
              st.integers(0, 2), st.sampled_from(["", "lint", "read"]), TEXT),
    st.none(),  # a keep-alive
)


@SETTINGS
@given(st.lists(CHUNK, max_size=12), st.sampled_from(["stop", "length", "tool_calls"]),
       st.booleans())
def test_any_chat_stream_becomes_well_formed_anthropic_events(chunks, finish, thinking):
    tail = [{"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
            {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(chunks),
                                      "prompt_tokens_details": {"cached_tokens": 2}}}]
    conv = Converter("m", thinking=thinking, count=lambda: 5)
    raw = b"".join(conv.events(iter([{"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
                                     *chunks, *tail])))
    events = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n", 1)
            events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    kinds = [k for k, _ in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert "error" not in kinds
    open_block = None
    seen = []
    for kind, data in events:
        if kind == "content_block_start":
            assert open_block is None, kinds
            open_block = data["index"]
            seen.append(open_block)
        elif kind == "content_block_delta":
            assert data["index"] == open_block, kinds
        elif kind == "content_block_stop":
            assert data["index"] == open_block, kinds
            open_block = None
    assert open_block is None and seen == list(range(len(seen))), kinds
    usage = dict(events)["message_delta"]["usage"]
    assert usage["output_tokens"] == len(chunks)


# -- config parsers -----------------------------------------------------------------------
def table(cls: type, extra: int = 1) -> st.SearchStrategy[dict[str, typing.Any]]:
    """A table with `cls`'s own keys (and a stray one now and then) holding any values."""
    names = [f.name for f in dataclasses.fields(cls)] + ["stray"] * extra
    return st.dictionaries(st.sampled_from(names), JSON, max_size=5)


GATEWAY_TOML = st.fixed_dictionaries({}, optional={
    "gateway": table(GatewaySection) | JSON,
    "eviction": table(EvictionSection) | JSON,
    "neurons": st.lists(table(NeuronEntry), max_size=3) | JSON,
    "entitlements": st.fixed_dictionaries({}, optional={
        "require_auth": JSON, "store": JSON,
        "keys": st.lists(table(KeyEntry), max_size=2) | JSON}) | table(EntitlementsSection),
    "models_config": JSON,
})
MODELS_TOML = st.fixed_dictionaries({}, optional={
    "models": st.lists(table(ModelEntry), max_size=3) | JSON,
    "aliases": st.dictionaries(TEXT, JSON, max_size=2) | JSON,
})
NEURON_TOML = table(NeuronConfig) | st.fixed_dictionaries({}, optional={
    "admission": table(AdmissionConfig) | JSON, "hf": table(HubConfig) | JSON,
    "default_models": JSON, "listen": JSON, "n_ctx": JSON, "parallel": JSON})


@SETTINGS
@given(st.sampled_from([(GatewayConfig, GATEWAY_TOML), (ModelsConfig, MODELS_TOML),
                        (NeuronConfig, NEURON_TOML)]).flatmap(
    lambda pair: st.tuples(st.just(pair[0]), pair[1])))
def test_any_config_table_builds_or_names_its_problem(case):
    cls, data = case
    try:
        build(cls, data, "the.toml")
    except ConfigError as exc:
        assert str(exc).startswith("the.toml"), exc
