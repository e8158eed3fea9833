"""The processes a bench run starts, their CPU seconds per phase, and their logs."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


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
