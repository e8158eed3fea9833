"""Chat and text completions through the real engine, streaming and not."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

from cortex.testing.tiny_gguf import SCRIPT_HELLO, script_text

HELLO = script_text(SCRIPT_HELLO)  # "Hello from tiny cortex."


def sse(resp) -> tuple[list[dict], list[str]]:
    """Parsed `data:` chunks and the raw lines (comments included) of an SSE reply."""
    chunks, lines = [], []
    for line in resp.iter_lines(decode_unicode=True):
        if not line:
            continue
        lines.append(line)
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[6:]))
    return chunks, lines


@pytest.fixture
def hello(neuron):
    neuron.load("file:tiny-hello")
    return neuron


def test_chat_answer_usage_and_timing(hello):
    body = hello.chat("tiny-hello", temperature=0).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": HELLO}
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] is None  # EOS, not a stop string
    usage = body["usage"]
    assert usage["completion_tokens"] == len(SCRIPT_HELLO) - 1  # EOS is not output
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert set(body["helexa_timing"]) >= {"prefill_ms", "decode_ms", "prefill_tokens"}


def test_second_request_reuses_the_prompt_cache(hello):
    first = hello.chat("tiny-hello", temperature=0).json()["usage"]
    again = hello.chat("tiny-hello", temperature=0).json()["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] - 1


def test_stream_chunks_usage_then_done(hello):
    r = hello.chat("tiny-hello", stream=True, temperature=0.7, seed=1)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["X-Accel-Buffering"] == "no"
    chunks, lines = sse(r)
    assert lines[-1] == "data: [DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == HELLO
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[-1]["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    # the prompt's size comes first (for Anthropic's message_start), and is the real one
    assert chunks[0]["helexa_prompt_tokens"] == usage_chunk["usage"]["prompt_tokens"] > 0
    assert usage_chunk["usage"]["completion_tokens"] == len(SCRIPT_HELLO) - 1
    assert usage_chunk["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}
    assert "cached_tokens" in usage_chunk["usage"]["prompt_tokens_details"]
    assert usage_chunk["helexa_timing"]["prefill_tokens"] > 0


def test_max_tokens_gives_length(neuron):
    neuron.load("file:tiny-loop")
    body = neuron.chat("tiny-loop", max_tokens=7).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 7
    body = neuron.chat("tiny-loop", max_completion_tokens=3).json()
    assert body["usage"]["completion_tokens"] == 3


def test_stop_sequence_across_tokens(hello):
    body = hello.chat("tiny-hello", stop=["y cor"], temperature=0).json()
    assert body["choices"][0]["message"]["content"] == "Hello from tin"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["stop_reason"] == "y cor"  # which stop string ended it
    chunks, _ = sse(hello.chat("tiny-hello", stop="cortex", stream=True))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello from tiny "
    (final,) = [c["choices"][0] for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]]
    assert final["stop_reason"] == "cortex"


def test_reasoning_split_into_reasoning_content(neuron):
    neuron.load("file:tiny-think")
    msg = neuron.chat("tiny-think", temperature=0).json()
    m = msg["choices"][0]["message"]
    assert m["reasoning_content"] == "\nThe user says hi.\n"
    assert m["content"] == "Hi there!"
    assert msg["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    chunks, _ = sse(neuron.chat("tiny-think", stream=True))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "\nThe user says hi.\n"
    assert "".join(d.get("content", "") for d in deltas) == "Hi there!"


def test_tool_call_parsed(neuron):
    neuron.load("file:tiny-tool")
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object",
                                              "properties": {"city": {"type": "string"}}}}}]
    body = neuron.chat("tiny-tool", "Weather in Paris?", tools=tools).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    chunks, _ = sse(neuron.chat("tiny-tool", "Weather?", tools=tools, stream=True))
    calls = [d for c in chunks if c["choices"]
             for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
    # Without tools in the request, the same output stays text.
    plain = neuron.chat("tiny-tool", "Weather?").json()["choices"][0]
    assert "<tool_call>" in plain["message"]["content"] and plain["finish_reason"] == "stop"


def test_text_completion(hello):
    body = hello.post("/v1/completions", {"model": "tiny-hello", "prompt": "Say:",
                                          "temperature": 0}).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == HELLO
    chunks, lines = sse(hello.post("/v1/completions", {"model": "tiny-hello", "prompt": "x",
                                                       "stream": True}, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == HELLO
    assert lines[-1] == "data: [DONE]"


def test_official_openai_client(hello):
    client = OpenAI(base_url=hello.url + "/v1", api_key="x")
    assert [m.id for m in client.models.list()] == ["file:tiny-hello"]
    r = client.chat.completions.create(model="file:tiny-hello", temperature=0,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].message.content == HELLO
    stream = client.chat.completions.create(
        model="file:tiny-hello", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True})
    parts = list(stream)
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == HELLO
    assert parts[-1].usage.completion_tokens == len(SCRIPT_HELLO) - 1


def test_tokenize_counts_with_the_template(hello):
    r = hello.post("/tokenize", {"model": "tiny-hello",
                                 "messages": [{"role": "user", "content": "Hi"}]}).json()
    prompt_tokens = hello.chat("tiny-hello").json()["usage"]["prompt_tokens"]
    assert r["tokens"] == prompt_tokens


def test_seeded_sampling_is_repeatable(neuron):
    neuron.load("file:tiny-tied")
    a = neuron.chat("tiny-tied", temperature=1.5, top_k=0, top_p=1, seed=7, max_tokens=8)
    b = neuron.chat("tiny-tied", temperature=1.5, top_k=0, top_p=1, seed=7, max_tokens=8)
    assert a.json()["choices"][0]["message"] == b.json()["choices"][0]["message"]
