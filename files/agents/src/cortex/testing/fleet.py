"""A fleet on loopback: named neurons and a gateway over them, served in threads.

What the collection's tests run Ansible against (the inventory plugin, the playbooks) and
what an agents test wants when the wiring between gateway and neurons is its subject.
Everything it started is closed together.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cortex.testing.served import Served, serve_gateway, serve_metrics, serve_neuron
from cortex.testing.waiting import wait_for

# The secrets of the collection's test fleets: the neurons' token, the gateway's admin key.
TOKEN = "neuron-secret-token"  # nosec B105 - a test fleet's own
ADMIN_KEY = "admin-secret-key"  # nosec B105 - a test fleet's own


class Fleet:
    def __init__(self, models_dir: Path, workdir: Path, *, token: str = "",
                 admin_key: str = "", **neuron_settings: Any) -> None:
        """`token`: the neurons' auth_token (the gateway sends it); `admin_key`: the
        gateway's admin key; `neuron_settings`: NeuronConfig fields for every neuron."""
        self.models_dir, self.workdir = models_dir, workdir
        self.token, self.admin_key = token, admin_key
        self.neuron_settings = neuron_settings
        self.neurons: dict[str, Served] = {}
        self.gw: Served | None = None
        self.metrics: Served | None = None
        self._started: list[Served] = []

    def neuron(self, name: str, *, fake_gpu: str | None = None, **settings: Any) -> Served:
        s = serve_neuron(self.models_dir, self.workdir / name / "cache", fake_gpu=fake_gpu,
                         **{"auth_token": self.token, **self.neuron_settings, **settings})
        self.neurons[name] = s
        self._started.append(s)
        return s

    def gateway(self, neurons: Mapping[str, Any] | None = None, **gateway: Any) -> Served:
        """A gateway over `neurons` (default: every neuron of this fleet) and its metrics
        listener (`.metrics`)."""
        admin = {"admin_keys": [self.admin_key]} if self.admin_key else {}
        self.gw = serve_gateway(self.neurons if neurons is None else neurons,
                                self.workdir / "gw-state",
                                **{"neuron_token": self.token, "connect_timeout_secs": 1.0,
                                   **admin, **gateway})
        self.gw.token = self.admin_key
        self.metrics = serve_metrics(self.gw)
        self._started += [self.gw, self.metrics]
        return self.gw

    def wait_healthy(self, *names: str, timeout: float = 30) -> None:
        """Until the gateway has seen the nodes `names` healthy (default: all of them)."""
        nodes = self.gw.gw.fleet.nodes
        wait_for(lambda: all(nodes[n].healthy for n in names or nodes),
                 f"the gateway to see {', '.join(names or nodes)} healthy", timeout)

    def close(self) -> None:
        for s in reversed(self._started):
            s.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
