"""Concurrent streams on one model: the neuron's continuous batching vs its baselines.

SmolLM2-135M Q4_1, greedy (repeat_penalty 1.1), 96 tokens per stream, at 1/2/4/8 streams:
  neuron       B concurrent streams through the neuron's streaming HTTP API
  serial       the same B requests through the neuron one after another
  direct-batch a direct llama-cpp-python loop decoding B sequences in one llama_batch
  direct-1     (B = 1 only) bench/neuron_decode.py's direct single-sequence loop
Rounds alternate the targets in a shuffled order. Aggregate decode tok/s = tokens after
the first of every stream / (last token of any stream - first token of any stream); for
serial, the sum of each request's own decode time. Per-stream tok/s and TTFT (request sent
to first token) are medians over streams. The HTTP client (threads, requests) runs on the
same cores as the neuron. Prints figures; asserts nothing.

    .venv/bin/python bench/neuron_concurrency.py [--rounds 3] [--tokens 96] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import llama_cpp
import requests
from llama_cpp import _internals as internals
from llama_cpp._logger import set_verbose
from neuron_decode import PROMPT, Direct, Stream, neuron_stream, smollm2_neuron

BATCHES = (1, 2, 4, 8)


def _prompt(i: int) -> list[dict]:
    # A different first message for every request defeats the prompt cache.
    return [dict(PROMPT[0], content=f"{PROMPT[0]['content']} {random.random():.6f} {i}"),
            PROMPT[1]]


class ThroughNeuron:
    def __init__(self, base: str, streams: int) -> None:
        self.base = base
        self.sessions = [requests.Session() for _ in range(streams)]

    def concurrent(self, b: int, max_tokens: int) -> list[Stream]:
        out: list[Stream | None] = [None] * b
        gate = threading.Barrier(b)

        def run(i: int) -> None:
            gate.wait()
            out[i] = neuron_stream(self.sessions[i], self.base, _prompt(i), max_tokens)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [s for s in out if s is not None]

    def serial(self, b: int, max_tokens: int) -> list[Stream]:
        return [neuron_stream(self.sessions[0], self.base, _prompt(i), max_tokens)
                for i in range(b)]


class DirectBatched:
    """The baseline: a minimal llama-cpp-python loop, B sequences in one llama_batch, each
    with its own penalties + greedy sampler chain, detokenising every token."""

    def __init__(self, path: Path, threads: int, n_ctx: int, max_seqs: int) -> None:
        set_verbose(False)
        llama_cpp.llama_backend_init()
        self.model = internals.LlamaModel(path_model=str(path),
                                          params=llama_cpp.llama_model_default_params(),
                                          verbose=False)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx * max_seqs, 512, 512
        cp.n_seq_max, cp.kv_unified = max_seqs, False
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = internals.LlamaContext(model=self.model, params=cp, verbose=False)
        self.mem = llama_cpp.llama_get_memory(self.ctx.ctx)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.template = ImmutableSandboxedEnvironment().from_string(
            self.model.metadata()["tokenizer.chat_template"])
        self.buf = ctypes.create_string_buffer(256)

    def _tokens(self, i: int) -> list[int]:
        text = self.template.render(messages=_prompt(i), add_generation_prompt=True)
        return self.model.tokenize(text.encode(), False, True)

    def run(self, b: int, max_tokens: int) -> list[Stream]:
        llama_cpp.llama_memory_clear(self.mem, True)
        prompts = [self._tokens(i) for i in range(b)]
        samplers = []
        for p in prompts:
            chain = llama_cpp.llama_sampler_chain_init(
                llama_cpp.llama_sampler_chain_default_params())
            pen = llama_cpp.llama_sampler_init_penalties(self.model.n_vocab(), 64, 1.1, 0, 0)
            llama_cpp.llama_sampler_chain_add(chain, pen)
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            for t in p[-64:]:
                llama_cpp.llama_sampler_accept(pen, t)
            samplers.append(chain)
        bt = self.batch
        sent = time.perf_counter()
        pos = [0] * b
        n = 0
        feed: list[tuple[int, int]] = []  # (seq, token)
        for s, p in enumerate(prompts):
            for j, tok in enumerate(p):
                bt.token[n], bt.pos[n], bt.n_seq_id[n] = tok, j, 1
                bt.seq_id[n][0], bt.logits[n] = s, j == len(p) - 1
                n += 1
            pos[s] = len(p)
            feed.append((s, n - 1))
        counts, first, last = [0] * b, [0.0] * b, [0.0] * b
        active = set(range(b))
        while active:
            bt.n_tokens = n
            if llama_cpp.llama_decode(self.ctx.ctx, bt) != 0:
                raise RuntimeError("llama_decode failed")
            now = time.perf_counter()
            nxt = []
            for s, idx in feed:
                tok = llama_cpp.llama_sampler_sample(samplers[s], self.ctx.ctx, idx)
                if llama_cpp.llama_vocab_is_eog(self.model.vocab, tok):
                    active.discard(s)
                    continue
                llama_cpp.llama_token_to_piece(self.model.vocab, tok, self.buf, 256, 0, False)
                counts[s] += 1
                first[s] = first[s] or now
                last[s] = now
                if counts[s] >= max_tokens:
                    active.discard(s)
                else:
                    nxt.append((s, tok))
            feed = []
            for n, (s, tok) in enumerate(nxt):
                bt.token[n], bt.pos[n], bt.n_seq_id[n] = tok, pos[s], 1
                bt.seq_id[n][0], bt.logits[n] = s, True
                pos[s] += 1
                feed.append((s, n))
            n = len(nxt)
        for c in samplers:
            llama_cpp.llama_sampler_free(c)
        return [Stream(counts[s], sent, first[s], last[s]) for s in range(b)]


def direct_single(direct: Direct, max_tokens: int) -> list[Stream]:
    sent = time.perf_counter()
    n, dt = direct.run(max_tokens)
    end = time.perf_counter()
    return [Stream(n, sent, end - dt, end)]


def figures(streams: list[Stream], serial: bool) -> dict[str, float]:
    decoded = sum(s.n - 1 for s in streams)
    if serial:
        span = sum(s.last - s.first for s in streams)
    else:
        span = max(s.last for s in streams) - min(s.first for s in streams)
    per = [(s.n - 1) / (s.last - s.first) for s in streams if s.last > s.first]
    return {"agg": decoded / span if span > 0 else 0.0,
            "per": statistics.median(per) if per else 0.0,
            "ttft": statistics.median((s.first - s.sent) * 1000 for s in streams),
            "tokens": statistics.median(s.n for s in streams)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    n_ctx = 1024
    top = max(BATCHES)
    settings = {"n_ctx": n_ctx, "n_threads": args.threads, "parallel": top}
    with smollm2_neuron("bench-concurrency-", settings) as (base, path):
        return run(args, base, path, n_ctx, top)


def run(args: argparse.Namespace, base: str, path: Path, n_ctx: int, top: int) -> int:
    neuron = ThroughNeuron(base, top)
    batched = DirectBatched(path, args.threads, n_ctx, top)
    single = Direct(path, args.threads, n_ctx)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for rnd in range(args.rounds):
        for b in BATCHES:
            targets = {
                "neuron": lambda b=b: figures(neuron.concurrent(b, args.tokens), False),
                "serial": lambda b=b: figures(neuron.serial(b, args.tokens), True),
                "direct-batch": lambda b=b: figures(batched.run(b, args.tokens), False),
            }
            if b == 1:
                targets["direct-1"] = lambda: figures(direct_single(single, args.tokens),
                                                      False)
            order = list(targets)
            random.shuffle(order)
            for name in order:
                results.setdefault((name, b), []).append(targets[name]())
                r = results[(name, b)][-1]
                print(f"  round {rnd + 1} B={b} {name}: {r['agg']:.1f} tok/s",
                      file=sys.stderr, flush=True)
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]}
           for k, v in results.items()}
    print(f"model SmolLM2-135M Q4_1, {args.threads} threads, greedy, {args.tokens} tokens "
          f"per stream, neuron parallel = {top}, {args.rounds} shuffled rounds (medians)")
    print(f"{'B':>2} {'target':13s} {'agg tok/s':>9s} {'per-stream':>10s} "
          f"{'TTFT ms':>8s} {'tokens':>6s}")
    for b in BATCHES:
        for name in ("neuron", "serial", "direct-batch", "direct-1"):
            m = med.get((name, b))
            if m:
                print(f"{b:>2} {name:13s} {m['agg']:9.1f} {m['per']:10.1f} "
                      f"{m['ttft']:8.1f} {m['tokens']:6.0f}")
        nb, sb, db = med[("neuron", b)], med[("serial", b)], med[("direct-batch", b)]
        line = (f"   ratios: neuron/serial {nb['agg'] / sb['agg']:.2f}, "
                f"neuron/direct-batch {nb['agg'] / db['agg']:.2f}")
        if b == 1:
            line += f", neuron/direct-1 {nb['agg'] / med[('direct-1', 1)]['agg']:.2f}"
        print(line)
    print("targets: B=4 neuron/serial >= 1.6; neuron/direct-batch >= 0.9 at every B; "
          "B=1 neuron/direct-1 >= 0.95")
    return 0


if __name__ == "__main__":
    sys.exit(main())
