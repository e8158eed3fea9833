"""What a bench run measures: the fake neuron, the gateway, the floors and LiteLLM, each
started as a process and reached as a `Target`; one call and the figures' helpers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from cortex.testing import tomlfile
from cortex.testing.ports import free_port
from cortex.testing.processes import gateway_toml
from cortex.testing.waiting import wait_for
from overhead.procs import Procs

HERE = Path(__file__).resolve().parent.parent  # bench/
BIN = Path(sys.executable).parent
MSG = [{"role": "user", "content": "Hi"}]
CHUNKS, INTERVAL = 64, 0.02
LITELLM_KEY = "sk-bench"
CONTENT_RE = re.compile(rb'"content":\s*"T(\d+\.\d+)')


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
