"""Greedy answers as good as the engine's own: the neuron's default sampling gives, token for
token, what llama-cpp-python's `create_chat_completion` gives for the same prompt and
settings (SmolLM2). The neuron once defaulted to repeat_penalty 1.1 over a window holding
the prompt's chat markup, and rambled to max_tokens where the engine answered and stopped;
llama-server, vLLM and llama-cpp-python default to no penalty, and OpenAI has none."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from cortex.testing.served import serve_neuron

PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "Name three primary colours.",
    "What is 12 times 12?",
    "Write one sentence about the sea.",
]


@pytest.fixture(scope="module")
def smol(smollm2_file: Path, models_factory, tmp_path_factory):
    n = serve_neuron(models_factory(smollm2=True), tmp_path_factory.mktemp("cache"),
                     n_ctx=512, parallel=1)
    n.load("file:smollm2")
    # The same settings: llama.cpp's flash attention on (the neuron's context leaves it to
    # llama.cpp's "auto", which turns it on here; llama-cpp-python's Llama turns it off, and
    # the other kernel's rounding alone changes 2 of these 4 greedy answers).
    direct = llama_cpp.Llama(str(smollm2_file), n_ctx=512, n_threads=2, verbose=False,
                             flash_attn=True)
    yield n, direct
    n.close()
    direct.close()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_output_equals_the_engines_own(smol, prompt):
    n, direct = smol
    messages = [{"role": "user", "content": prompt}]
    want = direct.create_chat_completion(messages=messages, temperature=0, max_tokens=48)
    r = n.post("/v1/chat/completions", {"model": "file:smollm2", "messages": messages,
                                        "temperature": 0, "max_tokens": 48})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert got["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
