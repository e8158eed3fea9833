"""End to end with the real SmolLM2-135M model and `neuron serve` under gunicorn."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from cortex.testing.processes import NeuronServer, rss_kb

QUESTION = [{"role": "system", "content": "Answer in English."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def served_neuron(smollm2_file: Path, models_factory, tmp_path_factory):
    n = NeuronServer(tmp_path_factory.mktemp("neuron"), models_factory(smollm2=True),
                     token="tok", default_models=["file:smollm2"], n_ctx=2048)
    n.start()
    n.wait_ready(120)
    act = n.health()["activation"]
    assert act["completed"] == ["file:smollm2"], act
    yield n.url, n
    n.stop()


def _client(base: str) -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key="tok")


def test_paris_non_streaming(served_neuron):
    base, _ = served_neuron
    r = _client(base).chat.completions.create(model="file:smollm2", messages=QUESTION,
                                              temperature=0, max_tokens=48)
    assert "Paris" in r.choices[0].message.content
    assert r.usage.prompt_tokens > 10


def test_paris_streaming(served_neuron):
    base, _ = served_neuron
    stream = _client(base).chat.completions.create(
        model="smollm2", messages=QUESTION, temperature=0, max_tokens=48, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage.completion_tokens > 0


def test_health_answers_during_generation(served_neuron):
    base, _ = served_neuron
    h = {"Authorization": "Bearer tok"}
    with requests.post(base + "/v1/chat/completions", headers=h, stream=True, timeout=60, json={
            "model": "smollm2", "max_tokens": 64, "stream": True, "messages": [
                {"role": "user", "content": "Write a long story about a lighthouse keeper."}]}
            ) as r:
        lines = r.iter_lines()
        for line in lines:  # up to the first generated token
            if b'"content":"' in line and b'"content":""' not in line:
                break
        health = requests.get(base + "/health", timeout=5)
        assert health.status_code == 200
        assert health.json()["models"][0]["in_flight"] == 1  # generating: tokens are flowing
        list(lines)


def test_unload_frees_memory(served_neuron):
    base, n = served_neuron
    h = {"Authorization": "Bearer tok"}
    worker = n.pids()[1]  # gunicorn's worker holds the model
    before = rss_kb(worker) / 1024
    r = requests.post(base + "/models/unload", json={"model_id": "file:smollm2"}, headers=h)
    assert r.status_code == 200
    after = rss_kb(worker) / 1024
    assert after < before - 50, (before, after)  # the 98 MB file and its context are gone
    r = requests.post(base + "/models/load", json={"model_id": "file:smollm2"}, headers=h)
    assert r.status_code == 200 and r.json()["model"]["load_seconds"] < 30


def test_sigterm_shuts_down_cleanly(served_neuron):
    _, n = served_neuron
    if os.environ.get("KEEP_NEURON"):
        pytest.skip("kept for debugging")
    n.proc.send_signal(signal.SIGTERM)
    assert n.proc.wait(30) == 0
    out = n.log.read_text(errors="replace")
    assert "Traceback" not in out, out
