"""Phase 1: non-streaming requests, one at a time, shuffled across the targets."""

from __future__ import annotations

import json
import random

from figures import med, pct

from overhead.procs import Procs
from overhead.targets import MSG, Target, ms, one_call, paired, sessions


async def latency(procs: Procs, targets: list[Target], rounds: int, per_round: int,
                  warmup: int) -> None:
    body = json.dumps({"model": "fake", "messages": MSG}).encode()
    ss = sessions(targets, 1)
    cpu0 = procs.cpu()
    try:
        for t in targets:
            for _ in range(warmup):
                await one_call(ss[t.name], t, body)
        per: dict[str, list[list[float]]] = {t.name: [] for t in targets}
        own: list[float] = []
        errors: dict[str, int] = {t.name: 0 for t in targets}
        for _ in range(rounds):
            order = [(t, k) for t in targets for k in range(per_round)]
            random.shuffle(order)
            got: dict[str, list[float]] = {t.name: [float("nan")] * per_round for t in targets}
            for t, k in order:
                try:
                    took, o = await one_call(ss[t.name], t, body)
                except Exception:
                    errors[t.name] += 1
                    continue
                got[t.name][k] = took
                if o is not None:
                    own.append(o)
            for name, v in got.items():
                per[name].append(v)
    finally:
        for s in ss.values():
            await s.close()
    cpu1 = procs.cpu()
    print(f"\n== non-streaming latency: {rounds} rounds x {per_round} calls per target, "
          "one at a time, shuffled ==")
    print(f"{'target':<10} {'P50 ms':>8} {'P99 ms':>8} {'added P50':>10} "
          f"{'P99 paired diff':>16} {'ratio P50':>10} {'errors':>7}")
    base = per["direct"]
    base_p50 = med([med([x for x in r if x == x]) for r in base])
    for t in targets:
        rows = per[t.name]
        p50 = med([med([x for x in r if x == x]) for r in rows])
        flat = [x for r in rows for x in r if x == x]
        diffs = paired(rows, base, lambda x: x)
        added = "" if t.name == "direct" else f"{(p50 - base_p50) * 1000:+9.2f}"
        pd = "" if t.name == "direct" else f"{pct(diffs, 0.99) * 1000:+15.2f}"
        print(f"{t.name:<10} {ms(p50):>8} {ms(pct(flat, 0.99)):>8} {added:>10} {pd:>16} "
              f"{p50 / base_p50:>9.2f}x {errors[t.name]:>7}")
    if own:
        print(f"gateway's own X-Cortex-Overhead-Ms header: P50 {ms(med(own))} ms, "
              f"P99 {ms(pct(own, 0.99))} ms")
    calls = warmup + rounds * per_round
    for role in ("gateway", "litellm"):
        used = sum(v - cpu0.get(k, 0.0) for k, v in cpu1.items() if k.startswith(role))
        if any(t.name == role for t in targets):
            print(f"{role} CPU per request (all its processes, {calls} requests, polls "
                  f"included): {used / calls * 1000:.2f} ms")
