"""Phase 2: N concurrent clients against each target for a few seconds."""

from __future__ import annotations

import asyncio
import json
import random
import time

import aiohttp
from figures import med, pct

from overhead.procs import Procs
from overhead.targets import MSG, Target, ms, one_call, sessions

# The processes that serve each target (by their Procs role).
ROLES = {"gateway": "gateway", "floor": "floor-geventhttpclient", "floor-http1": "floor-http1",
         "litellm": "litellm"}


async def throughput(procs: Procs, targets: list[Target], clients: int, secs: float,
                     reps: int) -> None:
    body = json.dumps({"model": "fake", "messages": MSG}).encode()
    rates: dict[str, list[float]] = {t.name: [] for t in targets}
    # CPU seconds of the target's own processes and the requests they served: what one
    # request costs the proxy, whatever else shares the cores.
    cpu: dict[str, list[float]] = {t.name: [0.0, 0] for t in targets}
    errs: dict[str, int] = {t.name: 0 for t in targets}
    lat: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(reps):
        order = list(targets)
        random.shuffle(order)
        for t in order:
            ss = sessions([t], clients)
            s = ss[t.name]
            done = 0
            stop_at = time.monotonic() + secs

            async def worker(t: Target = t, s: aiohttp.ClientSession = s,
                             stop_at: float = stop_at) -> None:
                nonlocal done
                while time.monotonic() < stop_at:
                    try:
                        took, _ = await one_call(s, t, body)
                        done += 1
                        lat[t.name].append(took)
                    except Exception:
                        errs[t.name] += 1

            start, c0 = time.monotonic(), procs.cpu()
            await asyncio.gather(*(worker() for _ in range(clients)))
            rates[t.name].append(done / (time.monotonic() - start))
            c1, role = procs.cpu(), ROLES.get(t.name, "-")
            cpu[t.name][0] += sum(v - c0.get(k, 0.0) for k, v in c1.items()
                                  if k.startswith(role + " "))
            cpu[t.name][1] += done
            await s.close()
            await asyncio.sleep(0.5)
    print(f"\n== throughput: {clients} concurrent clients, {secs:.0f}s x {reps} per target "
          "(the bench client shares the 2 cores) ==")
    for t in targets:
        used, served = cpu[t.name]
        own = f"  CPU {used / served * 1e6:5.0f} us/request" if t.name in ROLES and served else ""
        print(f"{t.name:<10} {med(rates[t.name]):8.0f} req/s  latency P50 "
              f"{ms(med(lat[t.name]))} ms P99 {ms(pct(lat[t.name], 0.99))} ms  "
              f"errors {errs[t.name]}{own}")
