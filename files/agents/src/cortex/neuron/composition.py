"""The composition root: everything one neuron process holds, built from its config.

The Flask app (`app`) serves one `Neuron` and only wires routes to it; nothing here, nor
in the modules below it, knows about HTTP frameworks (LAYERS.md).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from cortex.neuron.config import NeuronConfig
from cortex.neuron.gpu import Device, Devices
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.registry import Registry

log = logging.getLogger(__name__)


class Neuron:
    """Everything one neuron process holds (the Flask app has it as `extensions["neuron"]`)."""

    def __init__(self, cfg: NeuronConfig) -> None:
        self.cfg = cfg
        self.started = time.time()
        self.metrics = NeuronMetrics()
        self.devices = Devices(cfg.cpu_memory_mb)
        self.registry = Registry(cfg, self.devices, self.metrics)
        self.metrics.watch_devices(self.device_snapshot)
        self._state_file = Path(cfg.cache_dir) / "neuron-state.json"
        self.drained = bool(self._read_state().get("drained"))

    def device_snapshot(self) -> list[Device]:
        """The devices with their memory figures now (our models' share counted on CPU)."""
        return self.devices.snapshot(self.registry.used_mb())

    # Drained is kept on the neuron (the source of truth) so that every gateway sees it,
    # and on disk so that a restart in the middle of a rolling upgrade keeps it.
    def _read_state(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return {}

    def set_drained(self, drained: bool) -> None:
        self.drained = drained
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"drained": drained}))
            tmp.replace(self._state_file)
        except OSError as exc:
            log.warning("could not persist drained=%s: %s", drained, exc)
