"""What one large embeddings request costs a neuron, and the streams it shares the neuron with.

2,048 one-token inputs (an ~8 KB request) against a model of 1,024 dimensions (a tiny
GGUF with that hidden size: the engine's work is small, the reply is not), while the same
model streams a chat answer. Per round, in a shuffled order: the stream alone, and the
stream with the embeddings request sent once its first token is in. Figures: the
request's wall time and reply size, the neuron's CPU seconds for it, and the stream's
longest gap between two chunks (alone, and while the embeddings request ran): the HTTP
thread that writes the reply holds the interpreter, and a chunk waits for it. Medians over
rounds. Prints figures; asserts nothing.

    .venv/bin/python bench/neuron_embeddings.py [--rounds 5] [--inputs 2048] [--dim 1024]
    .venv/bin/python bench/neuron_embeddings.py --neuron-src /path/to/old/files/agents/src

`--neuron-src` runs the neuron from another checkout's source (the code before a change);
the bench itself, and the model it builds, come from this one.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
from overhead.procs import _stat, descendants

from cortex.testing.hub import offline_env
from cortex.testing.processes import NeuronServer, started
from cortex.testing.tiny_gguf import build_tiny_gguf

MODEL = "file:wide"


class Stream(threading.Thread):
    """A chat stream of the looping model, the arrival time of each chunk kept."""

    def __init__(self, url: str, tokens: int) -> None:
        super().__init__(daemon=True)
        self.url, self.tokens = url, tokens
        self.arrivals: list[float] = []
        self.first = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": self.tokens, "stream": True}
        with requests.post(self.url + "/v1/chat/completions", json=body, stream=True,
                           timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: {"):
                    self.arrivals.append(time.monotonic())
                    self.first.set()
                if self.stop.is_set():
                    return

    def longest_gap(self, start: float, end: float) -> float:
        """The longest wait for a chunk that arrived between `start` and `end`."""
        gaps = [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)
                if start <= b <= end]
        return max(gaps, default=float("nan"))


def cpu(root: int) -> float:
    return sum(s[1] for pid in descendants(root) if (s := _stat(pid)) is not None)


def one_round(neuron: NeuronServer, inputs: int, encoding: str | None, tokens: int
              ) -> dict[str, float]:
    s = Stream(neuron.url, tokens)
    s.start()
    if not s.first.wait(60):
        raise SystemExit("the stream never started")
    time.sleep(0.3)  # bench pacing: some chunks before the request, for the "alone" figure
    out: dict[str, float] = {}
    start, c0 = time.monotonic(), cpu(neuron.proc.pid)
    if encoding is None:  # the stream alone, for as long as a request would take
        time.sleep(1.0)
    else:
        body = {"model": MODEL, "input": ["a"] * inputs, "encoding_format": encoding}
        r = requests.post(neuron.url + "/v1/embeddings", json=body, timeout=300)
        out["status"] = r.status_code
        out["reply_mb"] = len(r.content) / 1e6
    end = time.monotonic()
    out["wall_s"] = end - start
    out["cpu_s"] = cpu(neuron.proc.pid) - c0
    out["gap_ms"] = s.longest_gap(start, end) * 1000
    s.stop.set()
    s.join(60)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--inputs", type=int, default=2048)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=60000, help="the stream's max_tokens")
    p.add_argument("--neuron-src", help="run the neuron from this files/agents/src")
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args()
    random.seed(a.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-embeddings-"))
    try:
        models = work / "models"
        models.mkdir()
        build_tiny_gguf(models / "wide.gguf", loop=True, pooling="mean", n_embd=a.dim,
                        context_length=65536, name="wide")
        env = offline_env(**({"PYTHONPATH": a.neuron_src} if a.neuron_src else {}))
        neuron = NeuronServer(work, models, "neuron", token="", env=env, parallel=2,
                              n_threads=2)
        with started(neuron):
            neuron.wait_ready(120)
            neuron.load(MODEL)
            print(f"neuron_embeddings: {time.strftime('%Y-%m-%d %H:%M:%S')}, neuron from "
                  f"{a.neuron_src or 'this checkout'}, {a.inputs} inputs x {a.dim} dimensions,"
                  f" {a.rounds} rounds")
            cases = {"stream alone": None, "float": "float", "base64": "base64"}
            got: dict[str, list[dict[str, float]]] = {c: [] for c in cases}
            for enc in cases.values():  # warm up each path once
                one_round(neuron, a.inputs, enc, a.tokens)
            for _ in range(a.rounds):
                order = list(cases)
                random.shuffle(order)
                for case in order:
                    got[case].append(one_round(neuron, a.inputs, cases[case], a.tokens))
        print(f"{'case':<14} {'status':>6} {'wall s':>7} {'neuron CPU s':>12} "
              f"{'reply MB':>9} {'stream max gap ms':>18}")
        for case, rows in got.items():
            def med(key: str, rows: list = rows) -> float:
                return statistics.median(r.get(key, float("nan")) for r in rows)
            status = ",".join(sorted({str(int(r["status"])) for r in rows if "status" in r}))
            print(f"{case:<14} {status or '-':>6} {med('wall_s'):>7.2f} {med('cpu_s'):>12.2f} "
                  f"{med('reply_mb'):>9.1f} {med('gap_ms'):>18.1f}")
        print(json.dumps({c: rows for c, rows in got.items()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
