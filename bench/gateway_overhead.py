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
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from figures import med, pct

from cortex.testing import tomlfile
from cortex.testing.ports import free_port
from cortex.testing.processes import gateway_toml
from cortex.testing.waiting import wait_for

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
MSG = [{"role": "user", "content": "Hi"}]
CHUNKS, INTERVAL = 64, 0.02
LITELLM_KEY = "sk-bench"
CONTENT_RE = re.compile(rb'"content":\s*"T(\d+\.\d+)')


# -- helpers -------------------------------------------------------------------------------
def paired(rows: list[list], base: list[list], key) -> list[float]:
    """Differences between the same round's same-index calls, where both succeeded."""
    out = []
    for ra, rb in zip(rows, base, strict=True):
        for a, b in zip(ra, rb, strict=True):
            va, vb = key(a), key(b)
            if va == va and vb == vb:
                out.append(va - vb)
    return out


def ms(x: float) -> str:
    return "   n/a" if x != x else f"{x * 1000:6.2f}"


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# -- processes and their CPU ---------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(int(entry))) is not None:
            parents[int(entry)] = s[0]
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(c for c, p in parents.items() if p == pid)
    return out


def system_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores)."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / TICK


class Procs:
    """The processes this bench started, by role; CPU read per process."""

    def __init__(self) -> None:
        self.roots: dict[str, subprocess.Popen] = {}

    def start(self, role: str, argv: list[str], log: Path, env: dict | None = None
              ) -> subprocess.Popen:
        # A session of its own: stopping it later reaches its children and nothing else.
        p = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        self.roots[role] = p
        return p

    def cpu(self) -> dict[str, float]:
        """Every process by label ("gateway master 123", "gateway worker 124", ...)."""
        out = {f"bench client {os.getpid()}": _stat(os.getpid())[1]}
        for role, p in self.roots.items():
            for pid in descendants(p.pid):
                s = _stat(pid)
                if s is None:
                    continue
                if role == "gateway":
                    kind = "master" if pid == p.pid else "worker"
                    out[f"gateway {kind} {pid}"] = s[1]
                else:
                    out[f"{role} {pid}"] = s[1]
        return out

    def stop(self) -> None:
        for p in self.roots.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in self.roots.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


class CpuPhase:
    """CPU seconds of each of our processes, the machine and the load average over a phase."""

    log: list[tuple[str, dict[str, float], float, float, tuple, tuple]] = []

    def __init__(self, procs: Procs, name: str) -> None:
        self.procs, self.name = procs, name

    def __enter__(self) -> CpuPhase:
        self.t0, self.c0, self.s0 = time.monotonic(), self.procs.cpu(), system_busy()
        self.l0 = os.getloadavg()
        return self

    def __exit__(self, *exc: object) -> None:
        c1 = self.procs.cpu()
        used = {k: c1[k] - self.c0.get(k, 0.0) for k in c1}
        wall = time.monotonic() - self.t0
        CpuPhase.log.append((self.name, used, wall, system_busy() - self.s0, self.l0,
                             os.getloadavg()))


def print_cpu() -> None:
    print("\n== CPU seconds per phase (2 cores: all of these compete for them) ==")
    for name, used, wall, busy, l0, l1 in CpuPhase.log:
        ours = sum(used.values())
        parts = ", ".join(f"{k} {v:.2f}" for k, v in used.items() if v >= 0.005)
        print(f"{name:<26} wall {wall:6.1f}s  machine busy {busy:6.1f}s  ours {ours:6.1f}s  "
              f"others {max(busy - ours, 0):5.1f}s  load {l0[0]:.2f}->{l1[0]:.2f}")
        print(f"{'':<26} {parts}")


# -- targets -------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    host: str
    port: int
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/v1/chat/completions"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float,
              check=lambda body: True, headers: dict | None = None,
              data: bytes | None = None) -> None:
    """Until `url` answers 200 with a body `check` accepts; exits with the log if not."""
    def ready() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited {proc.returncode}:\n"
                             + log.read_text()[-3000:])
        req = urllib.request.Request(url, data=data, headers=headers or {})
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200 and bool(check(r.read()))

    try:
        wait_for(ready, url, timeout, 0.2, ignore=(OSError, ValueError))
    except AssertionError as exc:
        raise SystemExit(f"{exc}\n" + log.read_text()[-3000:]) from None


def start_upstream(procs: Procs, tmp: Path) -> int:
    port = free_port()
    log = tmp / "upstream.log"
    p = procs.start("upstream", [sys.executable, str(HERE / "fake_neuron.py"), "--port",
                                 str(port), "--chunks", str(CHUNKS), "--interval",
                                 str(INTERVAL)], log)
    wait_http(f"http://127.0.0.1:{port}/health", p, log, 30)
    return port


def start_gateway(procs: Procs, tmp: Path, upstream: int, workers: int) -> int:
    port, mport = free_port(), free_port()
    tomlfile.write(tmp / "models.toml", {"models": [{"id": "fake"}]})
    tomlfile.write(tmp / "cortex.toml", gateway_toml(
        port, mport, tmp / "state", {"fake": f"http://127.0.0.1:{upstream}"}, workers=workers,
        poll_interval_secs=2.0, log_level="warning"))
    log = tmp / "gateway.log"
    p = procs.start("gateway", [str(BIN / "cortex"), "serve", "--config",
                                str(tmp / "cortex.toml")], log)
    body = json.dumps({"model": "fake", "messages": MSG}).encode()
    wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", p, log, 90,
              headers={"Content-Type": "application/json"}, data=body)
    return port


def start_floor(procs: Procs, tmp: Path, upstream: int, client: str) -> int:
    port = free_port()
    log = tmp / f"floor-{client}.log"
    env = dict(os.environ, UPSTREAM=f"http://127.0.0.1:{upstream}", FLOOR_CLIENT=client)
    p = procs.start(f"floor-{client}", [
        str(BIN / "gunicorn"), "-k", "gevent", "-w", "1", "--worker-connections", "4096",
        "--chdir", str(HERE), "-b", f"127.0.0.1:{port}", "--log-level", "warning",
        "floor_proxy:app"], log, env)
    body = json.dumps({"model": "fake", "messages": MSG}).encode()
    wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", p, log, 60,
              headers={"Content-Type": "application/json"}, data=body)
    return port


def find_litellm(arg: str | None) -> Path | None:
    for cand in (arg, os.environ.get("LITELLM_BIN"), "/tmp/litellm-venv/bin/litellm"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def start_litellm(procs: Procs, tmp: Path, exe: Path, upstream: int, workers: int) -> int:
    port = free_port()
    (tmp / "litellm.yaml").write_text(
        "model_list:\n"
        "  - model_name: fake\n"
        "    litellm_params:\n"
        "      model: openai/file:fake\n"
        f"      api_base: http://127.0.0.1:{upstream}/v1\n"
        "      api_key: none\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "  background_health_checks: false\n"
        "  disable_spend_logs: true\n"
        "litellm_settings:\n"
        "  telemetry: false\n")
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR",
               PATH=f"{exe.parent}:{os.environ.get('PATH', '')}")
    log = tmp / "litellm.log"
    p = procs.start("litellm", [str(exe), "--config", str(tmp / "litellm.yaml"), "--host",
                                "127.0.0.1", "--port", str(port), "--num_workers",
                                str(workers)], log, env)
    body = json.dumps({"model": "fake", "messages": MSG}).encode()
    wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", p, log, 180,
              headers={"Content-Type": "application/json",
                       "Authorization": f"Bearer {LITELLM_KEY}"}, data=body)
    return port


# -- phase 1: non-streaming latency --------------------------------------------------------
async def one_call(s: aiohttp.ClientSession, t: Target, body: bytes) -> tuple[float, float | None]:
    h = {"Content-Type": "application/json", **t.headers}
    start = time.perf_counter()
    async with s.post(t.url, data=body, headers=h) as r:
        await r.read()
        took = time.perf_counter() - start
        if r.status != 200:
            raise RuntimeError(f"{t.name}: HTTP {r.status}")
        own = r.headers.get("X-Cortex-Overhead-Ms")
    return took, (float(own) / 1000 if own else None)


def sessions(targets: list[Target], limit: int) -> dict[str, aiohttp.ClientSession]:
    return {t.name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(
        limit=limit, keepalive_timeout=30, force_close=False),
        timeout=aiohttp.ClientTimeout(total=60)) for t in targets}


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


# -- phase 2: throughput with concurrent clients --------------------------------------------
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


# -- phase 2b: each data-plane route --------------------------------------------------------
def _agent_body() -> dict:
    """The bytes of a real agent turn: Claude Code 2.1.197's recorded 82 KB request (system
    blocks, 24 tools, the conversation), sent as a non-streaming chat body."""
    data = HERE.parent / "files/agents/tests/data/claude_code_2.1.197_request.json"
    body = json.loads(data.read_text())
    body.pop("stream", None)
    return dict(body, model="fake")


# label: (path, body)
ROUTE_BODIES = {
    "/v1/chat/completions": ("/v1/chat/completions", {"model": "fake", "messages": MSG}),
    "chat, 82 KB agent turn": ("/v1/chat/completions", _agent_body()),
    "/v1/messages": ("/v1/messages", {"model": "fake", "max_tokens": 16, "messages": MSG}),
    "/v1/responses": ("/v1/responses", {"model": "fake", "max_output_tokens": 16,
                                        "input": "Hi"}),
    "/v1/embeddings": ("/v1/embeddings", {"model": "fake", "input": ["Hi there"]}),
}


TRANSLATED = ("/v1/messages", "/v1/responses")  # served by translating to chat completions


async def routes(targets: list[Target], calls: int) -> None:
    """Non-streaming P50 per route; /v1/messages and /v1/responses exist only on the
    gateway (their direct baseline is the chat call they become)."""
    by = {t.name: t for t in targets}
    plan = []
    for label, (path, body) in ROUTE_BODIES.items():
        for name in ("direct", "floor", "gateway"):
            if path in TRANSLATED and name != "gateway":
                continue
            t = by[name]
            plan.append((label, name, Target(t.name, t.host, t.port, t.model, t.headers, path),
                         json.dumps(body).encode()))
    ss = {(path, name): aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
          for path, name, _, _ in plan}
    got: dict[tuple[str, str], list[float]] = {(p, n): [] for p, n, _, _ in plan}
    errors: dict[tuple[str, str], int] = dict.fromkeys(got, 0)
    try:
        for k in range(calls + 20):
            random.shuffle(plan)
            for path, name, t, body in plan:
                try:
                    took, _ = await one_call(ss[(path, name)], t, body)
                except Exception:
                    errors[(path, name)] += 1
                    continue
                if k >= 20:  # the first 20 warm up
                    got[(path, name)].append(took)
    finally:
        for s in ss.values():
            await s.close()
    print(f"\n== routes: {calls} non-streaming calls each, one at a time, shuffled ==")
    print(f"{'route':<22} {'target':<8} {'P50 ms':>8} {'P99 ms':>8} {'added P50':>10} "
          f"{'errors':>7}")
    for label, (path, _) in ROUTE_BODIES.items():
        base = med(got[("/v1/chat/completions" if path in TRANSLATED else label, "direct")])
        for name in ("direct", "floor", "gateway"):
            if (label, name) not in got:
                continue
            v = got[(label, name)]
            added = "" if name == "direct" else f"{(med(v) - base) * 1000:+9.2f}"
            print(f"{label:<22} {name:<8} {ms(med(v)):>8} {ms(pct(v, 0.99)):>8} {added:>10} "
                  f"{errors[(label, name)]:>7}")


# -- phase 3: one stream at a time ---------------------------------------------------------
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


# -- phase 4: many concurrent streams ------------------------------------------------------
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


# -- main ----------------------------------------------------------------------------------
def summarize_log(name: str, log: Path) -> None:
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    kinds: dict[str, int] = {}
    for ln in lines:
        key = re.sub(r"\d+", "N", ln)[:140]
        kinds[key] = kinds.get(key, 0) + 1
    print(f"\n== {name} log: {len(lines)} lines ==")
    for key, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:12]:
        print(f"{count:>7} x {key}")


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
