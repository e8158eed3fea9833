"""The soak's memory watch: every process's RSS, sampled once a second."""

from __future__ import annotations

import threading
from typing import Protocol

from cortex.testing.processes import Service, rss_kb


class Clock(Protocol):
    stop: threading.Event

    def now(self) -> float: ...


class Rss:
    """RSS of every process, sampled every second: the first sample at least `warmup`
    seconds into each process's life, the first one past the run's half way (`half`, s)
    and the last one. Growth over the second half is what a leak shows; growth from the
    warm-up on also counts a process that took on its share of the load late (a gevent
    worker that accepted few connections at first)."""

    def __init__(self, services: list[Service], warmup: float, half: float) -> None:
        self.services, self.warmup, self.half = services, warmup, half
        self.first_seen: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.base: dict[int, int] = {}
        self.mid: dict[int, int] = {}
        self.last: dict[int, int] = {}

    def sample(self, now: float) -> None:
        for svc in self.services:
            pids = svc.pids()
            for pid in pids:
                role = f"{svc.name} {'master' if pid == pids[0] else 'worker'}"
                self.role.setdefault(pid, role)
                self.first_seen.setdefault(pid, now)
                kb = rss_kb(pid)
                if kb is None:
                    continue
                if pid not in self.base and now - self.first_seen[pid] >= self.warmup:
                    self.base[pid] = kb
                if pid in self.base and pid not in self.mid and now >= self.half:
                    self.mid[pid] = kb
                self.last[pid] = kb

    def run(self, s: Clock) -> None:
        while not s.stop.wait(1.0):
            self.sample(s.now())
