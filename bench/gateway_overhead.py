"""What the gateway adds on top of a neuron: latency, streaming timing, concurrent streams.

A fast fake neuron (bench/fake_neuron.py, aiohttp, its own process) on loopback; the real
gateway (`cortex serve`, gunicorn + gevent, `--workers`, default 1 for per-worker figures)
in front of it; the floor of the stack (bench/floor_proxy.py: gunicorn + gevent, forwards
the body, streams the reply back, nothing else) twice, once with geventhttpclient ("floor")
and once with the gateway's own gateway/http1.py ("floor-http1"), so the two HTTP clients
are compared with all else equal; optionally the LiteLLM proxy (`--litellm`).
Calls alternate in a shuffled order within each round between "direct" (to the upstream),
"direct-b" (the same again, to show the harness's own noise), the proxies and "litellm".
The "routes" phase times each data-plane route through the gateway (/v1/chat/completions,
/v1/messages, /v1/responses, /v1/embeddings) beside the same call direct and through the
floor, and a chat call carrying Claude Code's recorded 82 KB request (an agent's turn:
what parsing and writing a large body costs).
Figures: medians of per-round medians, P99 of paired differences (same round, same
index), the CPU seconds of every process in each phase, and the load average (the
machine has 2 cores; the bench client, the upstream and the gateway share them with
whatever else runs). Prints figures; asserts nothing.

Phases:
  latency     non-streaming requests, one at a time            (targets: +1 ms P50, +5 ms P99)
  throughput  N concurrent clients for a few seconds each      (req/s and CPU a request)
  stream      streams of 64 chunks 20 ms apart, one at a time  (targets: +2 ms TTFT, +1 ms gap P99)
              then TTFT over a bare socket, a new connection each (the client's cost left out)
  ramp        many concurrent streams (250 ... 3000), twice: all sent in one burst, then sent
              evenly over 1 s (shorter than a stream, so all are open together at the peak).
              A stream is clean when it is HTTP 200, every chunk arrives, [DONE] ends it
              and no wait (first chunk included) is over 1 s; "no-stall" leaves the wait
              for the first chunk out (target: >= 2000 clean on one gateway worker). The
              direct rows show what the client and upstream manage on their own.

    .venv/bin/python bench/gateway_overhead.py
    .venv/bin/python bench/gateway_overhead.py --litellm   # LITELLM_BIN or /tmp/litellm-venv
    .venv/bin/python bench/gateway_overhead.py --quick     # a short smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from overhead.latency import latency
from overhead.procs import CpuPhase, Procs, print_cpu, raise_nofile, summarize_log
from overhead.ramp import ramp
from overhead.routes import routes
from overhead.streams import streams
from overhead.targets import (
    LITELLM_KEY,
    Target,
    find_litellm,
    start_floor,
    start_gateway,
    start_litellm,
    start_upstream,
)
from overhead.throughput import throughput


async def run(a: argparse.Namespace, procs: Procs, tmp: Path) -> None:
    up = start_upstream(procs, tmp)
    gw = start_gateway(procs, tmp, up, a.workers)
    targets = [Target("direct", "127.0.0.1", up, "file:fake"),
               Target("direct-b", "127.0.0.1", up, "file:fake"),
               Target("gateway", "127.0.0.1", gw, "fake"),
               Target("floor", "127.0.0.1", start_floor(procs, tmp, up, "geventhttpclient"),
                      "fake"),
               Target("floor-http1", "127.0.0.1", start_floor(procs, tmp, up, "http1"),
                      "fake")]
    if a.litellm:
        exe = find_litellm(a.litellm_bin)
        if exe is None:
            print("LiteLLM: not found (set LITELLM_BIN or --litellm-bin, or install it into "
                  "/tmp/litellm-venv); measuring without it")
        else:
            lp = start_litellm(procs, tmp, exe, up, a.litellm_workers)
            targets.append(Target("litellm", "127.0.0.1", lp, "fake",
                                  {"Authorization": f"Bearer {LITELLM_KEY}"}))
            print(f"LiteLLM: {exe} ({a.litellm_workers} worker(s))")
    print("processes: " + ", ".join(procs.cpu()))
    if a.rounds:
        with CpuPhase(procs, "latency"):
            await latency(procs, targets, a.rounds, a.per_round, a.warmup)
    if a.throughput_secs:
        with CpuPhase(procs, "throughput"):
            await throughput(procs, targets, a.clients, a.throughput_secs, a.throughput_reps)
    if a.stream_rounds:
        with CpuPhase(procs, "streams"):
            await streams(targets, a.stream_rounds, a.stream_per_round)
    if a.route_calls:
        with CpuPhase(procs, "routes"):
            await routes(targets, a.route_calls)
    for spread in a.ramp_spread:
        if a.levels:
            await ramp(procs, targets, a.levels, a.ramp_timeout, spread)
    print_cpu()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1, help="gateway workers (default 1)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--per-round", type=int, default=15)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--throughput-secs", type=float, default=3.0)
    p.add_argument("--throughput-reps", type=int, default=2)
    p.add_argument("--stream-rounds", type=int, default=12)
    p.add_argument("--stream-per-round", type=int, default=1)
    p.add_argument("--route-calls", type=int, default=200,
                   help="calls per route and target in the routes phase (0 to skip)")
    p.add_argument("--levels", default="250,500,1000,2000,3000",
                   help="concurrent stream counts, comma separated ('' to skip)")
    p.add_argument("--ramp-timeout", type=float, default=60.0)
    p.add_argument("--ramp-spread", default="0,1",
                   help="seconds over which each level's requests go out, one ramp for each "
                        "(0 = a burst; under the 1.28 s a stream lasts, all are open at once)")
    p.add_argument("--litellm", action="store_true", help="also measure the LiteLLM proxy")
    p.add_argument("--litellm-bin", help="its `litellm` executable (or LITELLM_BIN)")
    p.add_argument("--litellm-workers", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args()
    if a.quick:
        a.rounds, a.per_round, a.warmup = 5, 5, 10
        a.throughput_secs, a.throughput_reps = 1.0, 1
        a.stream_rounds, a.levels, a.route_calls = 2, "100", 20
    a.levels = [int(x) for x in a.levels.split(",") if x.strip()]
    a.ramp_spread = [float(x) for x in a.ramp_spread.split(",") if x.strip()]
    random.seed(a.seed)
    limit = raise_nofile()
    need = 2 * max(a.levels, default=0) + 200
    print(f"gateway_overhead: {time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, RLIMIT_NOFILE {limit[0]}"
          f"{'' if limit[0] >= need else f' (below the ~{need} the ramp needs)'}, "
          f"gateway workers {a.workers} (worker_connections is fixed at 4096 in serve.py)")
    tmp = Path(tempfile.mkdtemp(prefix="cortex-bench-"))
    procs = Procs()
    t0 = time.monotonic()
    try:
        asyncio.run(run(a, procs, tmp))
    finally:
        procs.stop()
        for role in procs.roots:
            summarize_log(role, tmp / f"{role}.log")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"\ntotal {time.monotonic() - t0:.0f}s, load average now "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
