"""Anthropic's Messages API through the real gateway and real neurons, with the official SDK."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import anthropic
import pytest
import requests

from cortex.gateway.anthropic import translate
from cortex.gateway.config import EntitlementsSection, KeyEntry, Limit, ModelEntry, Window
from cortex.testing.agent_model import build_agent_model
from cortex.testing.model_sets import ModelSet, build_models
from cortex.testing.ports import free_port
from cortex.testing.sse import named_events
from cortex.testing.tiny_gguf import EOS, SCRIPT_HELLO, build_tiny_gguf, script_text

HELLO = script_text(SCRIPT_HELLO)
HI = [{"role": "user", "content": "Hi"}]
DATA = Path(__file__).parent / "data"

# A Qwen-style template that renders tools, tool calls and tool results. The scripted
# model's next token depends on the prompt's last token only, so after a tool result the
# template ends with a marker (<|answer|>) that starts the model's worded answer.
AGENT_TEMPLATE = (
    "{% if messages[0].role == 'system' or tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}{% endif %}"
    "{% if tools %}\n\n# Tools\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "</tools>{% endif %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{{ {'name': c.function.name, "
    "'arguments': c.function.arguments} | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m.role != 'system' %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if messages[-1].role == 'tool' %}<|answer|>{% endif %}{% endif %}"
)
# Thinking, then text, then two tool calls (a newline between them, as Qwen writes them);
# after a tool result: a worded answer. Script tokens must be unique, hence the second
# call's markers are spelled in other pieces.
AGENT_SCRIPT = [
    "<think>", "\nWeather", " and time.\n", "</think>", "\n\nLet me check.", "<tool_call>",
    "\n{", '"name":', ' "get_weather",', ' "arguments":', ' {"city":', ' "Paris"}}\n',
    "</tool_call>", "\n<tool_call", ">", '\n{"name":', ' "get_time",', ' "arguments": ',
    '{"tz":', ' "UTC"}}\n', "</tool_", "call>", EOS,
    "<|answer|>", "It", " is sunny", " in Paris.", EOS,
]
ANSWER = "It is sunny in Paris."
TOOLS = [
    {"name": "get_weather", "description": "The weather in a city.",
     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                      "required": ["city"]}},
    {"name": "get_time", "description": "The time in a time zone.",
     "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}}},
]
MODELS = ["tiny-hello", "tiny-think", "tiny-tool", "tiny-loop", "tiny-agent"]


@pytest.fixture(scope="module")
def agent_dir(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = build_models(tmp_path_factory.mktemp("agent-models"), ModelSet(base=models_dir))
    build_agent_model(d, (DATA / "claude_code_request.json").read_text(), script=AGENT_SCRIPT,
                      chat_template=AGENT_TEMPLATE)
    return d


@pytest.fixture
def neuron(neuron_factory, agent_dir):
    return neuron_factory(models_dir=str(agent_dir), n_ctx=16384)


@pytest.fixture
def gw(neuron, gateway_factory):
    return gateway_factory({"n1": neuron}, [ModelEntry(id=m) for m in MODELS],
                           aliases={"claude-sonnet-4-5-20250929": "tiny-agent"})


@pytest.fixture
def client(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="any", max_retries=0)


def neuron_count(neuron, body: dict) -> int:
    """The neuron's own count for the prompt an Anthropic body becomes."""
    req = translate.to_openai(body, count_only=True)
    r = neuron.post("/tokenize", dict(req, model=f"file:{req['model']}"))
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


# -- replies -----------------------------------------------------------------------------
def test_create(client, neuron):
    raw = client.messages.with_raw_response.create(model="tiny-hello", max_tokens=64,
                                                   messages=HI)
    assert raw.headers["X-Cortex-Node"] == "n1"
    m = raw.parse()
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.model == "tiny-hello"
    assert [(b.type, b.text) for b in m.content] == [("text", HELLO)]
    assert (m.stop_reason, m.stop_sequence) == ("end_turn", None)
    assert m.usage.input_tokens == neuron_count(neuron, {"model": "tiny-hello",
                                                         "messages": HI})
    assert m.usage.output_tokens == len(SCRIPT_HELLO) - 1


def test_stream_text_and_final_message(client, neuron):
    with client.messages.stream(model="tiny-hello", max_tokens=64, messages=HI) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == HELLO and final.content[0].text == HELLO
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == neuron_count(neuron, {"model": "tiny-hello",
                                                             "messages": HI})
    assert final.usage.output_tokens == len(SCRIPT_HELLO) - 1


def test_stream_event_sequence(gw, neuron):
    body = {"model": "tiny-hello", "max_tokens": 64, "messages": HI, "stream": True}
    r = gw.post("/v1/messages", body, stream=True, headers={"anthropic-version": "2023-06-01"})
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = named_events(r)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(d["type"] == n for n, d in events)
    start = events[0][1]["message"]
    # message_start carries the real prompt size, before any token is generated
    assert start["usage"]["input_tokens"] == neuron_count(neuron, body) > 0
    assert start["content"] == [] and start["stop_reason"] is None
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == len(SCRIPT_HELLO) - 1


def test_stop_sequence(client):
    m = client.messages.create(model="tiny-hello", max_tokens=64, messages=HI,
                               stop_sequences=["nothing", "y cor"])
    assert m.content[0].text == "Hello from tin"
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "y cor")
    with client.messages.stream(model="tiny-hello", max_tokens=64, messages=HI,
                                stop_sequences=["cortex"]) as s:
        final = s.get_final_message()
    assert final.content[0].text == "Hello from tiny "
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "cortex")


def test_max_tokens(client):
    m = client.messages.create(model="tiny-loop", max_tokens=5, messages=HI)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 5
    with client.messages.stream(model="tiny-loop", max_tokens=4, messages=HI) as s:
        final = s.get_final_message()
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 4


def test_thinking_blocks(client):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    m = client.messages.create(model="tiny-think", max_tokens=64, messages=HI,
                               thinking=thinking)
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "\nThe user says hi.\n" and m.content[1].text == "Hi there!"
    with client.messages.stream(model="tiny-think", max_tokens=64, messages=HI,
                                thinking=thinking) as s:
        kinds = [e.delta.type for e in s if e.type == "content_block_delta"]
        final = s.get_final_message()
    assert "thinking_delta" in kinds and "text_delta" in kinds
    assert [b.type for b in final.content] == ["thinking", "text"]
    # Unasked, a model's thoughts are not shown: Anthropic returns no thinking blocks then.
    m = client.messages.create(model="tiny-think", max_tokens=64, messages=HI)
    assert [(b.type, b.text) for b in m.content] == [("text", "Hi there!")]


def test_thinking_enabled_reaches_the_chat_template(neuron_factory, gateway_factory, tmp_path):
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                "{% endfor %}<|im_start|>assistant\n"
                "{% if enable_thinking %}<think>{% endif %}")
    (tmp_path / "m").mkdir()
    build_tiny_gguf(tmp_path / "m" / "tiny-flag.gguf", chat_template=template, name="tiny-flag")
    n = neuron_factory(models_dir=str(tmp_path / "m"))
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-flag")])
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    # The template opened <think>, so the whole answer is the model's reasoning.
    m = client.messages.create(model="tiny-flag", max_tokens=64, messages=HI,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    assert [(b.type, b.thinking) for b in m.content] == [("thinking", HELLO)]
    m = client.messages.create(model="tiny-flag", max_tokens=64, messages=HI)
    assert [(b.type, b.text) for b in m.content] == [("text", HELLO)]


# -- tools -------------------------------------------------------------------------------
def test_tool_use_round_trip(client):
    ask = [{"role": "user", "content": "Weather and time in Paris?"}]
    thinking = {"type": "enabled", "budget_tokens": 1024}
    m = client.messages.create(model="tiny-agent", max_tokens=200, messages=ask, tools=TOOLS,
                               thinking=thinking)
    assert [b.type for b in m.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert m.content[1].text == "Let me check."
    weather, time_ = m.content[2], m.content[3]
    assert (weather.name, weather.input) == ("get_weather", {"city": "Paris"})
    assert (time_.name, time_.input) == ("get_time", {"tz": "UTC"})
    assert m.stop_reason == "tool_use"
    results = [
        {"type": "tool_result", "tool_use_id": weather.id, "content": "sunny, 21 C"},
        {"type": "tool_result", "tool_use_id": time_.id, "is_error": True,
         "content": [{"type": "text", "text": "time service down"}]},
    ]
    history = [*ask, {"role": "assistant", "content": m.content},
               {"role": "user", "content": results}]
    answer = client.messages.create(model="tiny-agent", max_tokens=200, messages=history,
                                    tools=TOOLS, thinking=thinking)
    assert [(b.type, b.text) for b in answer.content] == [("text", ANSWER)]
    assert answer.stop_reason == "end_turn"
    # Streamed, the same answer after the same tool results.
    with client.messages.stream(model="tiny-agent", max_tokens=200, messages=history,
                                tools=TOOLS) as s:
        assert "".join(s.text_stream) == ANSWER


def test_interleaved_blocks_stream_with_their_own_indexes(client):
    with client.messages.stream(model="tiny-agent", max_tokens=200, tools=TOOLS,
                                messages=[{"role": "user", "content": "Weather and time?"}],
                                thinking={"type": "enabled", "budget_tokens": 1024}) as s:
        events = [e for e in s if e.type.startswith("content_block_")]
        final = s.get_final_message()
    starts = [(e.index, e.content_block.type) for e in events
              if e.type == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text"), (2, "tool_use"), (3, "tool_use")]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert stops == [0, 1, 2, 3]
    # every delta lands in the block open at the time, and of that block's kind
    kinds = {0: "thinking_delta", 1: "text_delta", 2: "input_json_delta", 3: "input_json_delta"}
    open_at = None
    for e in events:
        if e.type == "content_block_start":
            open_at = e.index
        elif e.type == "content_block_delta":
            assert e.index == open_at and e.delta.type == kinds[e.index]
    assert final.content[2].input == {"city": "Paris"}
    assert final.content[3].input == {"tz": "UTC"}
    assert final.stop_reason == "tool_use"


def test_tool_choice_none_and_named_tool(client):
    m = client.messages.create(model="tiny-tool", max_tokens=64, tools=TOOLS[:1], messages=HI,
                               tool_choice={"type": "tool", "name": "get_weather"})
    assert m.content[0].type == "tool_use" and m.stop_reason == "tool_use"
    m = client.messages.create(model="tiny-tool", max_tokens=64, tools=TOOLS[:1], messages=HI,
                               tool_choice={"type": "none"})
    assert m.content[0].type == "text" and "<tool_call>" in m.content[0].text
    m = client.messages.create(model="tiny-tool", max_tokens=64, tools=TOOLS[:1], messages=HI,
                               tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use"


# -- count_tokens ------------------------------------------------------------------------
def test_count_tokens_is_the_neurons_count(client, neuron):
    body = {"model": "tiny-agent", "system": [{"type": "text", "text": "Be brief.",
                                               "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": TOOLS}
    m = client.messages.create(max_tokens=200, **body)  # loads the model
    counted = client.messages.count_tokens(**body).input_tokens
    assert counted == neuron_count(neuron, body) > 50  # the tools are in the prompt
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == counted
    bare = client.messages.count_tokens(model="tiny-agent", messages=body["messages"])
    assert bare.input_tokens < counted


def test_count_tokens_never_loads_a_model(client, neuron):
    with pytest.raises(anthropic.InternalServerError) as exc:  # 503: retry once loaded
        client.messages.count_tokens(model="tiny-agent", messages=HI)
    assert exc.value.status_code == 503 and "not loaded" in error_of(exc.value)["message"]
    assert exc.value.response.headers["Retry-After"]
    # nothing was loaded (nor evicted) for it
    assert not [m for m in neuron.get("/models").json() if m["status"] != "available"]


# -- a request as Claude Code sends it -------------------------------------------------
# The recording names the Claude model it was made with; the SDK warns that it is retired.
@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
def test_claude_code_request_replayed(gw, client):
    recorded = json.loads((DATA / "claude_code_request.json").read_text())
    body, headers = recorded["body"], recorded["headers"]
    assert len(body["tools"]) >= 12 and len(body["messages"]) >= 12
    client.messages.create(model=body["model"], max_tokens=1, messages=HI)  # loads it
    counted = client.messages.count_tokens(
        **{k: body[k] for k in ("model", "system", "messages", "tools")}).input_tokens
    r = requests.post(gw.url + "/v1/messages?beta=true", json=body, stream=True, timeout=120,
                      headers=dict(headers, **{"x-api-key": "sk-anything"}))
    assert r.status_code == 200, r.text
    events = named_events(r)
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    usage = events[0][1]["message"]["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == counted > 2000
    assert events[0][1]["message"]["model"] == body["model"]
    text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert text == ANSWER  # the last turn was a tool result: the model answers in words
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"


# -- errors ------------------------------------------------------------------------------
def error_of(exc: anthropic.APIStatusError) -> dict:
    assert exc.body["type"] == "error"
    return exc.body["error"]


def test_invalid_requests_are_400(client):
    with pytest.raises(anthropic.BadRequestError) as exc:  # the SDK insists on max_tokens
        client.post("/v1/messages", cast_to=object,
                    body={"model": "tiny-hello", "messages": HI})
    assert error_of(exc.value) == {"type": "invalid_request_error",
                                   "message": "max_tokens: field required"}
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(model="tiny-hello", max_tokens=8,
                               messages=[{"role": "robot", "content": "Hi"}])
    assert "messages[0].role" in error_of(exc.value)["message"]
    with pytest.raises(anthropic.BadRequestError) as exc:  # the neuron's 422 is a 400 here
        client.messages.create(model="tiny-hello", max_tokens=8, messages=HI,
                               extra_body={"temperature": 7})
    assert error_of(exc.value)["type"] == "invalid_request_error"
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError) as exc:  # translated, then refused: text only
        client.messages.create(model="tiny-hello", max_tokens=8, messages=[
            {"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}])
    assert "text only" in error_of(exc.value)["message"]


def test_context_too_long_is_400(neuron, gateway_factory):
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello", limit=Limit(context=10))])
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(model="tiny-hello", max_tokens=8,
                               messages=[{"role": "user", "content": "x" * 400}])
    assert error_of(exc.value)["type"] == "invalid_request_error"


def test_unknown_model_is_404(client):
    with pytest.raises(anthropic.NotFoundError) as exc:
        client.messages.create(model="claude-opus-9", max_tokens=8, messages=HI)
    assert error_of(exc.value)["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-opus-9", messages=HI)


def test_auth_by_x_api_key_or_bearer(neuron, gateway_factory, tmp_path):
    keys = EntitlementsSection(require_auth=True, store=f"sqlite://{tmp_path}/s.db",
                               keys=[KeyEntry(key="sk-good", account_id="acme")])
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello")], entitlements=keys)
    by_key = anthropic.Anthropic(base_url=gw.url, api_key="sk-good", max_retries=0)
    assert by_key.messages.create(model="tiny-hello", max_tokens=8, messages=HI).content
    bearer = anthropic.Anthropic(base_url=gw.url, auth_token="sk-good", max_retries=0)
    assert bearer.messages.create(model="tiny-hello", max_tokens=8, messages=HI).content
    assert bearer.messages.count_tokens(model="tiny-hello", messages=HI).input_tokens > 0
    wrong = anthropic.Anthropic(base_url=gw.url, api_key="sk-bad", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as exc:
        wrong.messages.create(model="tiny-hello", max_tokens=8, messages=HI)
    assert error_of(exc.value)["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model="tiny-hello", messages=HI)


def test_rate_limited_is_429(neuron, gateway_factory, tmp_path):
    keys = EntitlementsSection(require_auth=True, store=f"sqlite://{tmp_path}/s.db", keys=[
        KeyEntry(key="sk-capped", account_id="acme", hard_cap=10,
                 window=Window(kind="rolling", seconds=600))])
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello")], entitlements=keys)
    client = anthropic.Anthropic(base_url=gw.url, api_key="sk-capped", max_retries=0)
    client.messages.create(model="tiny-hello", max_tokens=8, messages=HI)  # spends > 10
    with pytest.raises(anthropic.RateLimitError) as exc:
        client.messages.create(model="tiny-hello", max_tokens=8, messages=HI)
    assert error_of(exc.value)["type"] == "rate_limit_error"
    assert int(exc.value.response.headers["Retry-After"]) > 0


def test_body_too_large_is_413(neuron, gateway_factory):
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello")], max_body_bytes=2000)
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.ContentTooLargeError) as exc:
        client.messages.create(model="tiny-hello", max_tokens=8,
                               messages=[{"role": "user", "content": "x" * 5000}])
    assert error_of(exc.value)["type"] == "request_too_large"


def test_no_healthy_neuron_is_overloaded(gateway_factory):
    down = SimpleNamespace(url=f"http://127.0.0.1:{free_port()}")
    gw = gateway_factory({"n1": down}, [ModelEntry(id="tiny-hello")])
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as exc:
        client.messages.create(model="tiny-hello", max_tokens=8, messages=HI)
    assert exc.value.status_code == 503
    assert error_of(exc.value)["type"] == "overloaded_error"
    assert exc.value.response.headers["Retry-After"] == "5"


def test_unexpected_failure_is_api_error(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(translate, "to_anthropic", broken)
    with pytest.raises(anthropic.InternalServerError) as exc:
        client.messages.create(model="tiny-hello", max_tokens=8, messages=HI)
    assert exc.value.status_code == 500
    assert error_of(exc.value) == {"type": "api_error",
                                   "message": "internal error: RuntimeError"}


def test_neuron_dying_mid_stream_is_an_error_event(neuron_process, gateway_factory):
    n = neuron_process('n_ctx = 65536\ndefault_models = ["file:tiny-long"]')
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-long")])
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    got = []
    with pytest.raises(anthropic.APIStatusError) as exc:  # noqa: SIM117
        with client.messages.stream(model="tiny-long", max_tokens=60000, messages=HI) as s:
            for event in s:
                got.append(event.type)
                if len(got) == 6:
                    n.crash()  # the neuron dies mid-stream
    assert got[0] == "message_start" and "content_block_delta" in got
    assert error_of(exc.value)["type"] == "api_error"
    assert "stream broke off" in error_of(exc.value)["message"]


# -- a real model ------------------------------------------------------------------------
@pytest.mark.smollm2
def test_smollm2_answers_paris(smollm2_file, neuron_factory, gateway_factory, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "smollm2.gguf").symlink_to(smollm2_file)
    n = neuron_factory(models_dir=str(tmp_path / "m"), n_ctx=2048)
    gw = gateway_factory({"n1": n}, [ModelEntry(id="smollm2")])
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    greedy = {"temperature": 0}  # this SDK has no sampling arguments: the API still has them
    m = client.messages.create(model="smollm2", max_tokens=40, extra_body=greedy,
                               system="Answer in English.", messages=question)
    assert "Paris" in m.content[0].text and m.stop_reason in ("end_turn", "max_tokens")
    with client.messages.stream(model="smollm2", max_tokens=40, extra_body=greedy,
                                system=[{"type": "text", "text": "Answer in English."}],
                                messages=question) as s:
        assert "Paris" in "".join(s.text_stream)
