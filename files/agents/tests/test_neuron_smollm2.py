"""End to end with the real SmolLM2-135M model and `neuron serve` under gunicorn."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from openai import OpenAI

QUESTION = [{"role": "system", "content": "Answer in English."},
            {"role": "user", "content": "What is the capital of France?"}]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def served_neuron(smollm2_file: Path, tmp_path_factory):
    d = tmp_path_factory.mktemp("neuron")
    (d / "models").mkdir()
    shutil.copy(smollm2_file, d / "models" / "smollm2.gguf")
    port = _free_port()
    cfg = d / "neuron.toml"
    cfg.write_text(f'listen = "127.0.0.1:{port}"\nmodels_dir = "{d / "models"}"\n'
                   f'cache_dir = "{d / "cache"}"\ndefault_models = ["file:smollm2"]\n'
                   'auth_token = "tok"\nn_ctx = 2048\n')
    proc = subprocess.Popen([str(Path(sys.executable).parent / "neuron"), "serve", "--config",
                             str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            act = requests.get(base + "/health", timeout=2).json()["activation"]
            if act["state"] == "ready":
                break
        except requests.RequestException:
            pass
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "neuron not ready in time"
        time.sleep(0.1)
    assert act["completed"] == ["file:smollm2"], act
    yield base, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


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
            "model": "smollm2", "max_tokens": 200, "stream": True, "messages": [
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
    base, proc = served_neuron
    h = {"Authorization": "Bearer tok"}
    # The worker is gunicorn's child; it holds the model.
    worker = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[0])
    before = _rss_mb(worker)
    r = requests.post(base + "/models/unload", json={"model_id": "file:smollm2"}, headers=h)
    assert r.status_code == 200
    after = _rss_mb(worker)
    assert after < before - 50, (before, after)  # the 98 MB file and its context are gone
    r = requests.post(base + "/models/load", json={"model_id": "file:smollm2"}, headers=h)
    assert r.status_code == 200 and r.json()["model"]["load_seconds"] < 30


def test_sigterm_shuts_down_cleanly(served_neuron):
    _, proc = served_neuron
    if os.environ.get("KEEP_NEURON"):
        pytest.skip("kept for debugging")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    out = proc.stdout.read().decode()
    assert "Traceback" not in out, out
