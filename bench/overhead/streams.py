"""Phase 3: one stream at a time (TTFT, gaps, delays), then TTFT over a bare socket."""

from __future__ import annotations

import json
import random
import socket
import time
from dataclasses import dataclass, field

import aiohttp
from figures import med, pct

from overhead.targets import CHUNKS, CONTENT_RE, INTERVAL, MSG, Target, ms, paired, sessions


@dataclass
class StreamResult:
    ttft: float = float("nan")
    gaps: list[float] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    chunks: int = 0
    done: bool = False
    error: str = ""


async def one_stream(s: aiohttp.ClientSession, t: Target, body: bytes) -> StreamResult:
    res = StreamResult()
    h = {"Content-Type": "application/json", **t.headers}
    start = time.perf_counter()
    last = None
    try:
        async with s.post(t.url, data=body, headers=h) as r:
            if r.status != 200:
                res.error = f"HTTP {r.status}"
                await r.read()
                return res
            async for line in r.content:
                now, mono = time.perf_counter(), time.monotonic()
                if not line.startswith(b"data: "):
                    continue
                if b"[DONE]" in line:
                    res.done = True
                    continue
                if b'"error"' in line:
                    res.error = line[:200].decode(errors="replace")
                m = CONTENT_RE.search(line)
                if m is None:
                    continue
                res.chunks += 1
                res.delays.append(mono - float(m.group(1)))
                if last is None:
                    res.ttft = now - start
                else:
                    res.gaps.append(now - last)
                last = now
    except Exception as exc:
        res.error = repr(exc)
    return res


async def streams(targets: list[Target], rounds: int, per_round: int) -> None:
    body = json.dumps({"model": "fake", "messages": MSG, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    ss = sessions(targets, 1)
    per: dict[str, list[list[StreamResult]]] = {t.name: [] for t in targets}
    try:
        for t in targets:  # warm up
            await one_stream(ss[t.name], t, body)
        for _ in range(rounds):
            order = [(t, k) for t in targets for k in range(per_round)]
            random.shuffle(order)
            got: dict[str, list[StreamResult]] = {t.name: [None] * per_round for t in targets}
            for t, k in order:
                got[t.name][k] = await one_stream(ss[t.name], t, body)
            for name, v in got.items():
                per[name].append(v)
    finally:
        for s in ss.values():
            await s.close()
    print(f"\n== streams one at a time: {rounds} rounds x {per_round} per target, "
          f"{CHUNKS} chunks {INTERVAL * 1000:.0f} ms apart ==")
    print(f"{'target':<10} {'TTFT P50':>9} {'added':>7} {'P99 pair':>9} {'gap P50':>8} "
          f"{'gap P99':>8} {'added':>7} {'delay P50':>10} {'delay P99':>10} {'added':>7} "
          f"{'lost/err':>9}")
    base = per["direct"]

    def ttft_p50(rows: list[list[StreamResult]]) -> float:
        return med([med([r.ttft for r in rr if r.ttft == r.ttft]) for rr in rows])

    b_ttft = ttft_p50(base)
    b_gaps = pct([g for rr in base for r in rr for g in r.gaps], 0.99)
    b_delay = pct([d for rr in base for r in rr for d in r.delays], 0.99)
    for t in targets:
        rows = per[t.name]
        flat = [r for rr in rows for r in rr]
        tt = ttft_p50(rows)
        pairs = paired(rows, base, lambda r: r.ttft)
        gaps = [g for r in flat for g in r.gaps]
        delays = [d for r in flat for d in r.delays]
        bad = sum(1 for r in flat if r.chunks != CHUNKS or not r.done or r.error)
        is_base = t.name == "direct"
        print(f"{t.name:<10} {ms(tt):>9} "
              f"{'' if is_base else f'{(tt - b_ttft) * 1000:+7.2f}':>7} "
              f"{'' if is_base else f'{pct(pairs, 0.99) * 1000:+9.2f}':>9} "
              f"{ms(med(gaps)):>8} {ms(pct(gaps, 0.99)):>8} "
              f"{'' if is_base else f'{(pct(gaps, 0.99) - b_gaps) * 1000:+7.2f}':>7} "
              f"{ms(med(delays)):>10} {ms(pct(delays, 0.99)):>10} "
              f"{'' if is_base else f'{(pct(delays, 0.99) - b_delay) * 1000:+7.2f}':>7} "
              f"{bad:>4}/{len(flat)}")
        for r in flat:
            if r.error:
                print(f"    {t.name} error: {r.error}")
                break
    print("(ms; TTFT = request sent -> first content chunk; gap = between successive chunks "
          "at the client; delay = upstream send -> client receipt of each chunk; 'added' is "
          "against direct; 'P99 pair' = P99 of paired TTFT differences)")
    bare_ttft(targets, body, rounds * per_round)


def one_bare_ttft(t: Target, body: bytes) -> float:
    """Seconds from sending a request to receiving its first content chunk, over a new
    blocking socket, parsing nothing but the marker (NaN when it fails)."""
    head = "".join(f"{k}: {v}\r\n" for k, v in t.headers.items())
    req = (f"POST {t.path} HTTP/1.1\r\nHost: {t.host}\r\nContent-Type: application/json\r\n"
           f"{head}Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        with socket.create_connection((t.host, t.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start, buf = time.perf_counter(), b""
            s.sendall(req)
            while b'"content":"T' not in buf:
                data = s.recv(65536)
                if not data:
                    return float("nan")
                buf += data
            return time.perf_counter() - start
    except OSError:
        return float("nan")


def bare_ttft(targets: list[Target], stream_body: bytes, n: int) -> None:
    """TTFT again without the aiohttp client: its line reader costs about a millisecond
    more through a proxy than direct, about the same for every proxy (2026-12-04: gateway
    +0.46 ms, floor +0.52 over a bare socket; +1.59 and +1.75 through aiohttp)."""
    got: dict[str, list[float]] = {t.name: [] for t in targets}
    order = [t for t in targets for _ in range(max(n, 20))]
    random.shuffle(order)
    for t in order:
        got[t.name].append(one_bare_ttft(t, stream_body))
    p50 = {name: med([x for x in xs if x == x]) for name, xs in got.items()}
    print("TTFT over a bare socket, a new connection each (the client's own cost left out): "
          + ", ".join(f"{name} {ms(v)}" + ("" if name == "direct" else
                                          f" ({(v - p50['direct']) * 1000:+.2f})")
                      for name, v in p50.items())
          + f"; failed {sum(1 for xs in got.values() for x in xs if x != x)}")
