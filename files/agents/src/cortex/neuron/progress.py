"""How far a model load has come: download bytes, then the engine's own progress.

A load goes through phases: `preparing` (preflight, listing the repository), `downloading`
(hub bytes, watched on disk), `queued` (behind another model's engine load), `loading`
(llama.cpp's progress callback: the share of tensor bytes read). `fraction` is the
current phase's share done; `eta_secs` extrapolates the phase's own pace, so it is None
until the phase has made some progress.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class LoadProgress:
    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.started = time.monotonic()
        self.phase = "preparing"
        self.bytes_done = 0
        self.bytes_total = 0
        self.fraction = 0.0
        self._phase_started = self.started
        self._base = 0  # bytes already there when the phase began (a resumed download)
        self._lock = threading.Lock()

    def begin(self, phase: str, total: int = 0, done: int = 0) -> None:
        with self._lock:
            self.phase, self.bytes_total, self.bytes_done = phase, total, done
            self.fraction = done / total if total else 0.0
            self._phase_started, self._base = time.monotonic(), done

    def update(self, *, done: int | None = None, fraction: float | None = None) -> None:
        """New bytes done (a download) or a fraction (the engine); either gives the other."""
        with self._lock:
            if done is not None:  # a late report from the watcher never goes backwards
                done = self.bytes_done = max(self.bytes_done, done)
                if self.bytes_total:
                    fraction = done / self.bytes_total
            elif fraction is not None and self.bytes_total:
                self.bytes_done = int(fraction * self.bytes_total)
            if fraction is not None:
                self.fraction = min(1.0, max(self.fraction, fraction))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            spent = now - self._phase_started
            f = self.fraction
            eta = None
            if self.phase == "downloading" and self.bytes_total:
                moved = self.bytes_done - self._base
                if moved > 0 and spent > 0:
                    eta = (self.bytes_total - self.bytes_done) / (moved / spent)
            elif 0 < f < 1 and spent > 0:
                eta = spent * (1 - f) / f
            return {"model_id": self.model_id, "phase": self.phase,
                    "fraction": round(f, 4), "bytes_done": self.bytes_done,
                    "bytes_total": self.bytes_total,
                    "elapsed_secs": round(now - self.started, 2),
                    "eta_secs": None if eta is None else round(eta, 1)}
