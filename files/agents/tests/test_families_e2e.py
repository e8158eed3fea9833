# ruff: noqa: RUF001 - DeepSeek's markers are written with fullwidth bars (U+FF5C)
"""Every model family yields a well-formed tool call in every dialect, end to end.

For each family a tiny scripted GGUF carries the family's real chat template and answers
with a call written the family's way; the real pipeline (the template, the tokenizer, the
scheduler, the family's parser, the gateway's translations) turns it into OpenAI
`tool_calls`, Anthropic `tool_use` and Responses `function_call`, streaming and not, for
the official SDKs and for the recorded Claude Code and Codex requests with all their tools.
Special tokens among a family's markers (gpt-oss's `<|channel|>`, Kimi's
`<|tool_call_begin|>`) are control tokens in these models, as in the real ones: the engine
shows them because the family names them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import pytest
import requests
from openai import OpenAI

from cortex.gateway.config import ModelEntry
from cortex.testing.agent_model import build_agent_model
from cortex.testing.served import serve_gateway, serve_neuron
from cortex.testing.sse import named_events
from cortex.testing.tiny_gguf import EOS

DATA = Path(__file__).parent / "data"
TEMPLATES = DATA / "chat_templates"


def brief(value: Any, limit: int = 160) -> Any:
    """A recorded request with its prose (system prompts, tool descriptions) cut to `limit`
    characters a string: every field, tool and schema as the client sent them, at a fifth of
    the prompt. What is checked here is the call's shape, not the words; the gateway's own
    tests send the recordings whole."""
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, list):
        return [brief(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: brief(v, limit) for k, v in value.items()}
    return value


CLAUDE_CODE = brief(json.loads((DATA / "claude_code_2.1.197_request.json").read_text()))
CODEX = brief(json.loads((DATA / "codex_responses_request.json").read_text()))


def json_args(k: str, v: str) -> list[str]:
    return [f'{{"{k}":', f'▁"{v}"}}']


# family -> (its template, the script of a call to tool t with argument k = v)
FAMILIES = {
    "hermes": ("Qwen-Qwen3-0.6B", lambda t, k, v: [
        "<tool_call>", "\n{", '"name":', f'▁"{t}",', '▁"arguments":', f'▁{{"{k}":',
        f'▁"{v}"}}}}\n', "</tool_call>", EOS]),
    "qwen3_coder": ("Qwen3-Coder", lambda t, k, v: [
        "<tool_call>", "\n<function=", f"{t}>", "\n<parameter=", f"{k}>", f"\n{v}",
        "\n</parameter>", "\n</function>", "\n</tool_call>", EOS]),
    "harmony": ("openai-gpt-oss-120b", lambda t, k, v: [
        "<|channel|>", "commentary▁to=functions.", t, "▁json", "<|message|>",
        *json_args(k, v), EOS]),
    "llama3": ("meta-llama-Llama-3.3-70B-Instruct", lambda t, k, v: [
        '{"name":', f'▁"{t}",', '▁"parameters":', f'▁{{"{k}":', f'▁"{v}"}}}}', EOS]),
    "mistral": ("Mistral-Small-3.2-24B-Instruct-2506", lambda t, k, v: [
        "[TOOL_CALLS]", t, "[ARGS]", *json_args(k, v), EOS]),
    "deepseek_r1": ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", lambda t, k, v: [
        "Run", "▁it.", "</think>", "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "function",
        "<｜tool▁sep｜>", t, "\n```json\n", *json_args(k, v), "\n```", "<｜tool▁call▁end｜>",
        "<｜tool▁calls▁end｜>", EOS]),
    "deepseek_v3_1": ("deepseek-ai-DeepSeek-V3.1", lambda t, k, v: [
        "Run", "▁it.", "</think>", "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", t,
        "<｜tool▁sep｜>", *json_args(k, v), "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", EOS]),
    "deepseek_v3_2": ("deepseek-ai-DeepSeek-V3.2", lambda t, k, v: [
        "Run", "▁it.", "</think>", "<｜DSML｜function_calls>", "\n<｜DSML｜invoke▁name=",
        f'"{t}">', "\n<｜DSML｜parameter▁name=", f'"{k}"▁string="true">', v,
        "</｜DSML｜parameter>", "\n</｜DSML｜invoke>", "\n</｜DSML｜function_calls>", EOS]),
    "glm": ("GLM-4.7-Flash", lambda t, k, v: [
        "Run", "▁it.", "</think>", "<tool_call>", t, "<arg_key>", k, "</arg_key>",
        "<arg_value>", v, "</arg_value>", "</tool_call>", EOS]),
    "kimi_k2": ("Kimi-K2-Thinking", lambda t, k, v: [
        "<think>", "Run▁it.", "</think>", "<|tool_calls_section_begin|>", "<|tool_call_begin|>",
        f"functions.{t}:0", "<|tool_call_argument_begin|>", *json_args(k, v),
        "<|tool_call_end|>", "<|tool_calls_section_end|>", EOS]),
    "minimax_m2": ("MiniMax-M2", lambda t, k, v: [
        "Run", "▁it.", "</think>", "\n\n<minimax:tool_call>", "\n<invoke▁name=", f'"{t}">',
        "\n<parameter▁name=", f'"{k}">', v, "</parameter>", "\n</invoke>",
        "\n</minimax:tool_call>", EOS]),
}
NAMES = sorted(FAMILIES)
# Two models a family, each knowing the words of one recorded request (so that request
# fits its context): one calls Claude Code's Bash (also offered by the SDK tests), one
# Codex's exec_command.
BASH = ("Bash", "command", "ls")
EXEC = ("exec_command", "cmd", "ls")
# Harmony's end-of-call tokens, so that llama.cpp does not take <|end|> for one (as with
# gpt-oss's own vocabulary).
HARMONY_EOG = ["<|call|>", "<|return|>", "<|end|>", "<|start|>", "<|constrain|>"]


def model(family: str, request: str) -> str:
    return f"fam-{family}-{request}"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("family-models")
    for family, (template, script) in FAMILIES.items():
        source = (TEMPLATES / f"{template}.jinja").read_text()
        for request, recorded, call in (("cc", CLAUDE_CODE, BASH), ("cx", CODEX, EXEC)):
            name = model(family, request)
            build_agent_model(d, json.dumps(recorded) + " ".join(HARMONY_EOG),
                              script=script(*call), chat_template=source, name=name,
                              context_length=8192, compact=True)
    neuron = serve_neuron(d, tmp_path_factory.mktemp("cache"), n_ctx=8192, parallel=1)
    gateway = serve_gateway({"n1": neuron}, tmp_path_factory.mktemp("gw"),
                            [ModelEntry(id=model(f, r)) for f in FAMILIES for r in ("cc", "cx")])
    gateway.neuron_served = neuron
    yield gateway
    gateway.close()
    neuron.close()


@pytest.fixture(scope="module")
def openai_client(gw) -> OpenAI:
    return OpenAI(base_url=gw.url + "/v1", api_key="sk-any", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def anthropic_client(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="sk-any", max_retries=0, timeout=120)


ASK = [{"role": "user", "content": "List the files."}]
SCHEMA = {"type": "object", "properties": {"command": {"type": "string"}},
          "required": ["command"]}
OPENAI_TOOL = {"type": "function", "function": {"name": "Bash", "description": "Run a command",
                                                "parameters": SCHEMA}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("family", NAMES)
def test_chat_completions_carry_the_call(openai_client, family, stream):
    kw = {"model": model(family, "cc"), "messages": ASK, "tools": [OPENAI_TOOL],
          "max_tokens": 200}
    if stream:  # the SDK puts the call together from its deltas (arguments as they come)
        with openai_client.chat.completions.stream(**kw) as s:
            choice = s.get_final_completion().choices[0]
    else:
        choice = openai_client.chat.completions.create(**kw).choices[0]
    calls = choice.message.tool_calls
    assert not (choice.message.content or "").strip()
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("Bash", {"command": "ls"})]
    assert calls[0].id


@pytest.mark.parametrize("family", NAMES)
def test_a_forced_call_is_written_and_read_the_familys_way(openai_client, family):
    """tool_choice "required": the grammar, in the family's syntax, admits the model's
    own call token by token (a token it refused would send the model elsewhere)."""
    choice = openai_client.chat.completions.create(
        model=model(family, "cc"), messages=ASK, tools=[OPENAI_TOOL], max_tokens=200,
        tool_choice="required", parallel_tool_calls=False).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments))
            for c in choice.message.tool_calls] == [("Bash", {"command": "ls"})]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("family", NAMES)
def test_anthropic_messages_carry_the_call(anthropic_client, family, stream):
    kw = {"model": model(family, "cc"), "messages": ASK, "max_tokens": 200,
          "tools": [{"name": "Bash", "description": "Run a command", "input_schema": SCHEMA}]}
    if stream:
        with anthropic_client.messages.stream(**kw) as s:
            message = s.get_final_message()
    else:
        message = anthropic_client.messages.create(**kw)
    uses = [b for b in message.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("Bash", {"command": "ls"})]
    assert uses[0].id and message.stop_reason == "tool_use"
    assert not [b for b in message.content if b.type == "text" and b.text.strip()]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("family", NAMES)
def test_responses_carry_the_call(openai_client, family, stream):
    kw = {"model": model(family, "cc"), "input": "List the files.", "tools": [
        {"type": "function", "name": "Bash", "description": "Run a command",
         "parameters": SCHEMA}]}
    if stream:
        events = list(openai_client.responses.create(stream=True, **kw))
        response = events[-1].response
        assert events[-1].type == "response.completed"
    else:
        response = openai_client.responses.create(**kw)
    calls = [i for i in response.output if i.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("Bash", {"command": "ls"})]
    assert calls[0].call_id


def replay(gw, path: str, body: dict, headers: dict) -> list:
    """The events of a recorded request sent as its client sends it (streaming)."""
    r = requests.post(gw.url + path, json=body, stream=True, timeout=300, headers=headers)
    assert r.status_code == 200, r.text
    return named_events(r)


# The recorded requests, with all their tools: one streaming replay each.
@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
@pytest.mark.parametrize("family", NAMES)
def test_claude_code_gets_a_tool_use(gw, family):
    events = replay(gw, "/v1/messages?beta=true", dict(CLAUDE_CODE, model=model(family, "cc")),
                    {"x-api-key": "sk-any", "anthropic-version": "2023-06-01"})
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    uses = [b for b in starts if b["type"] == "tool_use"]
    assert [u["name"] for u in uses] == ["Bash"]
    index = starts.index(uses[0])
    args = "".join(d["delta"]["partial_json"] for n, d in events
                   if n == "content_block_delta" and d["index"] == index)
    assert json.loads(args) == {"command": "ls"}
    assert [d["delta"]["stop_reason"] for n, d in events if n == "message_delta"] == [
        "tool_use"]


@pytest.mark.parametrize("family", NAMES)
def test_codex_gets_a_function_call(gw, family):
    events = replay(gw, "/v1/responses", dict(CODEX, model=model(family, "cx")),
                    {"Authorization": "Bearer sk-any", "originator": "codex_exec"})
    name, final = events[-1]
    assert name == "response.completed"
    calls = [i for i in final["response"]["output"] if i["type"] == "function_call"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("exec_command", {"cmd": "ls"})]


def test_the_neuron_says_how_it_reads_each_model(gw, openai_client):
    for family in FAMILIES:  # loaded by the tests above, or now
        openai_client.chat.completions.create(model=model(family, "cc"), messages=ASK,
                                              max_tokens=1)
    listed = {m["id"]: m for m in gw.neuron_served.get("/models").json()}
    for family in FAMILIES:
        entry = listed[f"file:{model(family, 'cc')}"]
        assert (entry["chat_format"], entry["chat_format_source"]) == (family, "template")
