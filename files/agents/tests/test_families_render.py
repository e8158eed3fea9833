# ruff: noqa: RUF001 - DeepSeek's markers are written with fullwidth bars (U+FF5C)
"""Each family's real chat template renders a multi-turn tool conversation as the model
expects it: the prompt text is checked whole against the expected text beside the template
(tests/data/chat_templates/expected/), and the family's quirks one by one.

The conversation has an earlier exchange, a turn that thought and made two calls in
parallel (ids and arguments as clients send them: OpenAI's JSON strings), and both results:
the prompt the model continues from in an agent's loop. Regenerate the expected texts with
CORTEX_UPDATE_EXPECTED=1 and read the diff before committing it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest

from cortex.core.errors import BadRequest
from cortex.neuron import chat as chatmod
from cortex.neuron import chat_template
from cortex.neuron.families import FAMILIES, detect

DATA = Path(__file__).parent / "data" / "chat_templates"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"}, "days": {"type": "integer"}}}}}
CALLS = [
    {"id": "call_a1", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}},
    {"id": "call_b2", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}},
]
CONVERSATION = {"tools": [WEATHER], "messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Weather in Paris and Lyon?"},
    {"role": "assistant", "content": None, "reasoning_content": "Two cities: two calls.",
     "tool_calls": CALLS},
    {"role": "tool", "tool_call_id": "call_a1", "content": "sunny, 24 C"},
    {"role": "tool", "tool_call_id": "call_b2", "content": "rain, 18 C"},
]}
# The bos and eos tokens' texts in the vendors' tokenizers
CHATML = ("", "<|im_end|>")
LLAMA = ("<|begin_of_text|>", "<|eot_id|>")
MISTRAL = ("<s>", "</s>")
DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
GLM = ("", "<|endoftext|>")
KIMI = ("[BOS]", "[EOS]")
# template -> (family, bos, eos)
TEMPLATES = {
    "Qwen-Qwen3-0.6B": ("hermes", *CHATML),
    "Qwen-QwQ-32B": ("hermes", *CHATML),
    "Qwen-Qwen2.5-7B-Instruct": ("hermes", *CHATML),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ("hermes", LLAMA[0], CHATML[1]),
    "Qwen3-Coder": ("qwen3_coder", *CHATML),
    "Qwen3.5-4B": ("qwen3_coder", *CHATML),
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": ("qwen3_coder", *CHATML),
    "openai-gpt-oss-120b": ("harmony", "<|startoftext|>", "<|return|>"),
    "meta-llama-Llama-3.1-8B-Instruct": ("llama3", *LLAMA),
    "meta-llama-Llama-3.2-3B-Instruct": ("llama3", *LLAMA),
    "meta-llama-Llama-3.3-70B-Instruct": ("llama3", *LLAMA),
    "Mistral-Small-3.2-24B-Instruct-2506": ("mistral", *MISTRAL),
    "unsloth-mistral-Devstral-Small-2507": ("mistral", *MISTRAL),
    "mistralai-Ministral-3-14B-Reasoning-2512": ("mistral", *MISTRAL),
    "mistralai-Mistral-Nemo-Instruct-2407": ("mistral", *MISTRAL),
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": ("deepseek_r1", *DEEPSEEK),
    "deepseek-ai-DeepSeek-V3.1": ("deepseek_v3_1", *DEEPSEEK),
    "deepseek-ai-DeepSeek-V3.2": ("deepseek_v3_2", *DEEPSEEK),
    "GLM-4.6": ("glm", *GLM),
    "GLM-4.7-Flash": ("glm", *GLM),
    "moonshotai-Kimi-K2": ("kimi_k2", *KIMI),
    "Kimi-K2-Instruct": ("kimi_k2", *KIMI),
    "Kimi-K2-Thinking": ("kimi_k2", *KIMI),
    "MiniMax-M2": ("minimax_m2", "]~!b[", "[e~["),
}


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch):
    monkeypatch.setattr(chat_template, "now", lambda: dt.datetime(2026, 1, 15, 9, 30))


def template(name: str) -> str:
    return (DATA / f"{name}.jinja").read_text()


def render(name: str, body: dict | None = None, **extra) -> str:
    family, bos, eos = TEMPLATES[name]
    text, _ = chatmod.render(dict(body or CONVERSATION, **extra), template(name),
                             FAMILIES[family], bos_token=bos, eos_token=eos)
    return text


def test_every_fixture_is_in_the_table():
    assert sorted(TEMPLATES) == sorted(p.stem for p in DATA.glob("*.jinja"))


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_family_is_read_off_the_template(name):
    assert detect(template(name)).name == TEMPLATES[name][0]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_tool_conversation_renders_as_expected(name):
    text = render(name)
    expected = DATA / "expected" / f"{name}.txt"
    if os.environ.get("CORTEX_UPDATE_EXPECTED"):
        expected.write_text(text)
    assert text == expected.read_text()
    # Whatever the syntax: both calls, both arguments, both results reach the model.
    for needle in ("get_weather", "Paris", "Lyon", "sunny, 24 C", "rain, 18 C"):
        assert needle in text, needle


@pytest.mark.parametrize("name", [n for n, (f, _, _) in TEMPLATES.items() if f == "mistral"])
def test_mistral_gets_nine_character_ids_the_same_for_call_and_result(name):
    text = render(name)
    ids = re.findall(r"\b[0-9a-f]{9}\b", text)
    if "[CALL_ID]" in template(name) or "call_id" in template(name):
        assert len(set(ids)) == 2 and all(text.count(i) == 2 for i in set(ids)), ids


def test_mistral_roles_alternate_after_a_late_system_message():
    body = {"messages": [{"role": "user", "content": "Hi"},
                         {"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Weather?"}]}
    text = render("Mistral-Small-3.2-24B-Instruct-2506", body)
    assert "[INST]Hi\n\nBe brief.\n\nWeather?[/INST]" in text


def test_kimi_reads_its_own_call_ids_back():
    text = render("moonshotai-Kimi-K2")
    assert "functions.get_weather:0<|tool_call_argument_begin|>" in text
    assert "functions.get_weather:1<|tool_call_argument_begin|>" in text
    # (this first K2 template writes a backslash and an n, not a newline: as shipped)
    assert "## Return of functions.get_weather:0\\nsunny" in text
    assert "## Return of functions.get_weather:1\\nrain" in text


@pytest.mark.parametrize("name, kept", [
    ("MiniMax-M2", "<think>\nTwo cities: two calls.\n</think>"),
    ("Kimi-K2-Thinking", "<think>Two cities: two calls.</think>"),
    ("GLM-4.6", "<think>Two cities: two calls.</think>"),
    ("Qwen3.5-4B", "<think>\nTwo cities: two calls.\n</think>"),
    ("openai-gpt-oss-120b", "<|channel|>analysis<|message|>Two cities: two calls.<|end|>"),
])
def test_the_thought_of_the_turn_in_progress_is_fed_back(name, kept):
    assert kept in render(name)


def test_gpt_oss_gets_one_call_a_message_each_with_its_result():
    text = render("openai-gpt-oss-120b")
    paris = text.index('to=functions.get_weather<|channel|>commentary json<|message|>'
                       '{"city": "Paris", "days": 2}<|call|>')
    sunny = text.index('"sunny, 24 C"')
    lyon = text.index('{"city": "Lyon"}<|call|>')
    rain = text.index('"rain, 18 C"')
    assert paris < sunny < lyon < rain


def test_gpt_oss_takes_the_reasoning_effort():
    assert "Reasoning: high" in render("openai-gpt-oss-120b", reasoning_effort="high")
    assert "Reasoning: medium" in render("openai-gpt-oss-120b")


def test_a_forced_call_on_a_template_of_unknown_syntax_is_prompted_the_hermes_way():
    source = "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}" \
             "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    family = detect(source)
    assert family.name == "generic"
    body = {"messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER]}
    free, _ = chatmod.render(body, source, family)
    forced, _ = chatmod.render(dict(body, tool_choice="required"), source, family)
    assert "[AVAILABLE_TOOLS]" in free and "<tool_call>" not in free
    assert "[AVAILABLE_TOOLS]" not in forced and "<tool_call>" in forced


def test_deepseek_r1_hears_of_its_tools_in_its_own_syntax():
    text = render("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")
    assert '"name": "get_weather"' in text
    assert ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜><function-name>"
            in text)


def test_a_template_that_rejects_the_conversation_is_400():
    body = {"messages": [{"role": "assistant", "content": "Hi"}]}
    with pytest.raises(BadRequest) as err:
        render("Qwen3.5-4B", body)
    assert err.value.status == 400 and "No user query" in err.value.message


def test_arguments_that_are_not_json_are_400_not_500():
    body = json.loads(json.dumps(CONVERSATION))
    body["messages"][4]["tool_calls"][0]["function"]["arguments"] = "{not json"
    with pytest.raises(BadRequest) as err:
        render("Qwen3-Coder", body)
    assert err.value.status == 400
