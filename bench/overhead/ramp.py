"""Phase 4: many concurrent streams, each on its own connection, in a burst or spread."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

from figures import med

from overhead.procs import CpuPhase, Procs, descendants
from overhead.targets import CHUNKS, CONTENT_RE, INTERVAL, MSG, Target


class RawStream(asyncio.Protocol):
    """One streaming request on its own connection; nothing parsed until the end."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.sent = 0.0
        self.end = 0.0
        self.first = 0.0
        self.last = 0.0
        self.max_wait = 0.0
        self.max_gap = 0.0  # waits after the first bytes of the reply
        self.tail = b""
        self.ended = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, req: bytes) -> None:
        self.sent = self.last = time.perf_counter()
        self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        wait = now - self.last
        if wait > self.max_wait:
            self.max_wait = wait
        if self.first and wait > self.max_gap:
            self.max_gap = wait
        self.last = now
        self.parts.append(data)
        end = self.tail + data
        self.tail = end[-16:]
        if not self.first and b"data: " in end:
            self.first = now  # the first event, not just the headers
        if b"[DONE]" in end and end.endswith(b"0\r\n\r\n"):
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.end = time.perf_counter()
        if not self.ended.done():
            self.ended.set_result(exc)


@dataclass
class RampResult:
    n: int
    clean: int = 0
    no_stall: int = 0  # complete and no wait over 1 s after the first bytes
    complete: int = 0
    failed: int = 0  # not 200, an error event, or cut off
    stalled: int = 0  # complete but a wait over 1 s, or not ended in time
    connect_failed: int = 0
    first_p50: float = float("nan")
    first_max: float = float("nan")
    wait_max: float = float("nan")
    gap_max: float = float("nan")
    peak: int = 0  # most streams open at one instant (sent, not yet ended)
    took: float = 0.0
    sample: str = ""


async def ramp_once(t: Target, n: int, timeout: float, spread: float) -> RampResult:
    loop = asyncio.get_running_loop()
    body = json.dumps({"model": t.model, "messages": MSG, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in t.headers.items())
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {t.host}:{t.port}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{head}"
           "Connection: close\r\n\r\n").encode() + body
    res = RampResult(n)
    sem = asyncio.Semaphore(200)

    async def connect() -> RawStream | None:
        async with sem:
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(RawStream, t.host, t.port), 10)
                return proto
            except (TimeoutError, OSError):
                return None

    protos = await asyncio.gather(*(connect() for _ in range(n)))
    live = [p for p in protos if p is not None]
    res.connect_failed = n - len(live)
    start = time.perf_counter()
    for i, p in enumerate(live):  # on connections already open, evenly over `spread` s
        delay = start + spread * i / len(live) - time.perf_counter()
        if delay > 0.001:
            await asyncio.sleep(delay)
        p.send(req)
    await asyncio.wait([p.ended for p in live], timeout=max(1.0, timeout - spread))
    res.took = time.perf_counter() - start
    firsts = []
    for p in live:
        if not p.ended.done():
            p.transport.abort()
            res.stalled += 1
            res.sample = res.sample or "not ended within the time limit"
            continue
        raw = b"".join(p.parts)
        ok_status = raw.startswith(b"HTTP/1.1 200") or raw.startswith(b"HTTP/1.0 200")
        chunks = len(CONTENT_RE.findall(raw))
        done = b"data: [DONE]" in raw
        error = b'"error"' in raw
        if not ok_status or error or not done or chunks != CHUNKS:
            res.failed += 1
            if not res.sample:
                res.sample = (f"status/body {raw[:120]!r} ... {raw[-200:]!r} "
                              f"chunks={chunks} done={done}")
            continue
        res.complete += 1
        firsts.append(p.first - p.sent)
        if p.max_gap <= 1.0:
            res.no_stall += 1
        if p.max_wait > 1.0:
            res.stalled += 1
        else:
            res.clean += 1
    waits = [p.max_wait for p in live if p.ended.done()]
    res.first_p50, res.first_max = med(firsts), max(firsts, default=float("nan"))
    res.wait_max = max(waits, default=float("nan"))
    res.gap_max = max((p.max_gap for p in live if p.ended.done()), default=float("nan"))
    edges = sorted([(p.sent, 1) for p in live]
                   + [(p.end or float("inf"), -1) for p in live], key=lambda e: (e[0], e[1]))
    now_open = 0
    for _, step in edges:
        now_open += step
        res.peak = max(res.peak, now_open)
    return res


async def ramp(procs: Procs, targets: list[Target], levels: list[int], timeout: float,
               spread: float) -> None:
    how = ("all sent at once" if not spread else
           f"sent evenly over {spread:g} s, so all are open together at the peak")
    print(f"\n== concurrent streams ({CHUNKS} chunks {INTERVAL * 1000:.0f} ms apart, {how}, "
          "on connections opened beforehand; clean = 200, every chunk, [DONE], no wait "
          "over 1 s) ==")
    print(f"{'target':<10} {'streams':>7} {'peak':>5} {'clean':>6} {'no-stall':>8} "
          f"{'complete':>8} {'failed':>6} {'stalled':>7} {'no-conn':>7} {'1st P50':>8} "
          f"{'1st max':>8} {'max gap':>8} {'took s':>7}")
    best: dict[str, int] = {t.name: 0 for t in targets}
    best_ns: dict[str, int] = {t.name: 0 for t in targets}
    alive = {t.name for t in targets}
    for n in levels:
        order = [t for t in targets if t.name in alive]
        random.shuffle(order)
        for t in order:
            gw_pids = set(descendants(procs.roots["gateway"].pid))
            with CpuPhase(procs, f"ramp{'' if not spread else ' spread'} {t.name} {n}"):
                r = await ramp_once(t, n, timeout, spread)
            if t.name == "gateway":
                now = set(descendants(procs.roots["gateway"].pid))
                if now != gw_pids:
                    r.sample += f" [gateway processes changed: {sorted(gw_pids)} -> " \
                                f"{sorted(now)}]"
            print(f"{t.name:<10} {n:>7} {r.peak:>5} {r.clean:>6} {r.no_stall:>8} "
                  f"{r.complete:>8} "
                  f"{r.failed:>6} {r.stalled:>7} {r.connect_failed:>7} {r.first_p50:>8.2f} "
                  f"{r.first_max:>8.2f} {r.gap_max:>8.2f} {r.took:>7.1f}")
            if r.sample:
                print(f"    {t.name} {n}: {r.sample}")
            if r.clean == n:
                best[t.name] = n
            if r.no_stall == n:
                best_ns[t.name] = n
            elif not t.name.startswith("direct"):
                alive.discard(t.name)  # no point asking for more once one level fails
            await asyncio.sleep(2)  # let closed sockets drain before the next level
    print("most concurrent streams all clean (first chunk within 1 s too): "
          + ", ".join(f"{k} {v}" for k, v in best.items()))
    print("most concurrent streams all without loss or a stall after their first chunk: "
          + ", ".join(f"{k} {v}" for k, v in best_ns.items()))
    print("(1st = request sent -> first event, s; max gap = the longest wait "
          "after that, s; a target stops at its first level that is not all no-stall)")
