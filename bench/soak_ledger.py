"""The soak's ledger: what the gateway billed each key against what the neurons say they
read and generated for it.

Neurons count tokens per account (`neuron_account_tokens_total{account, kind}`, prompt and
completion, however a request ended); the soak gives each client its own key and account,
so the two sides line up per key. A neuron killed by a fault starts its counters again:
the ledger scrapes every neuron twice a second and banks what a counter held before it
fell, so a kill loses at most the last half second of a neuron's counts (said in the
table). The gateway's side is its spend store (SQLite in its state directory).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cortex.gateway.store import key_id_for
from cortex.testing.processes import SERVICE_ERRORS, NeuronServer


@dataclass
class Ledger:
    neurons: dict[str, NeuronServer]
    accounts: dict[str, str]  # key -> account
    banked: dict[tuple[str, str], float] = field(default_factory=dict)  # (neuron, account)
    last: dict[tuple[str, str], float] = field(default_factory=dict)
    resets: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # One scrape at a time (the soak also scrapes before a kill): a scrape read earlier
    # but applied later would look like a restart.
    scraping: threading.Lock = field(default_factory=threading.Lock)

    def scrape(self) -> None:
        with self.scraping:
            self._scrape()

    def _scrape(self) -> None:
        for name, n in self.neurons.items():
            try:
                text = n.metrics()
            except SERVICE_ERRORS:
                continue  # down (a fault): its last counts are banked when it is back
            seen = _account_tokens(text)
            with self.lock:
                fell = any(seen.get(a, 0.0) < v for (nn, a), v in self.last.items()
                           if nn == name)
                if fell:  # a restart: what the old process counted is banked
                    self.resets += 1
                    for (nn, a), v in list(self.last.items()):
                        if nn == name:
                            self.banked[(nn, a)] = self.banked.get((nn, a), 0.0) + v
                            self.last[(nn, a)] = 0.0
                for a, v in seen.items():
                    self.last[(name, a)] = v

    def run(self, stop: threading.Event, every: float = 0.5) -> None:
        while not stop.wait(every):
            self.scrape()

    def generated(self, account: str) -> int:
        with self.lock:
            return int(sum(v for (_, a), v in [*self.banked.items(), *self.last.items()]
                           if a == account))


def _account_tokens(text: str) -> dict[str, float]:
    """account -> prompt + completion tokens, from a neuron's Prometheus text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("neuron_account_tokens_total{"):
            continue
        head, _, value = line.rpartition(" ")
        account = head.partition('account="')[2].partition('"')[0]
        out[account] = out.get(account, 0.0) + float(value)
    return out


def spend(state_dir: Path) -> dict[str, int]:
    """key_id -> tokens billed, from the gateway's spend store."""
    conn = sqlite3.connect(state_dir / "entitlements.sqlite3")
    try:
        return dict(conn.execute("SELECT key_id, tokens FROM spend_total").fetchall())
    finally:
        conn.close()


def report(ledger: Ledger, state_dir: Path, bound: int, requests: dict[str, int],
           capped: set[str]) -> int:
    """Print the table; return how many keys are off by more than `bound` tokens."""
    billed = spend(state_dir)
    print(f"spend vs generated, per key (gateway spend store vs the neurons' "
          f"neuron_account_tokens_total, prompt + completion; tolerance: one request, "
          f"{bound} tokens; {ledger.resets} neuron restarts banked):")
    print(f"  {'key':12s} {'cap':>6s} {'requests':>8s} {'billed':>9s} {'generated':>9s} "
          f"{'billed-gen':>10s}  verdict")
    off = 0
    totals = [0, 0]
    for key, account in sorted(ledger.accounts.items(), key=lambda kv: int(kv[1][7:])):
        b, g = billed.get(key_id_for(key), 0), ledger.generated(account)
        totals[0] += b
        totals[1] += g
        ok = abs(b - g) <= bound
        off += not ok
        print(f"  {account:12s} {'yes' if key in capped else 'no':>6s} "
              f"{requests.get(key, 0):8d} {b:9d} {g:9d} {b - g:+10d}  "
              f"{'ok' if ok else 'OFF'}")
    print(f"  {'all':12s} {'':>6s} {sum(requests.values()):8d} {totals[0]:9d} "
          f"{totals[1]:9d} {totals[0] - totals[1]:+10d}")
    return off
