"""Real neurons and a real gateway on 127.0.0.1 for the collection's plugin and playbook tests.

Each app runs in a werkzeug server thread of the test process; Ansible runs as a subprocess
(ansible-inventory / ansible-playbook) against them, as an operator's controller would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")  # never the hub
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import requests
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# ansible-test runs the tests from a staged copy that is a real collection tree; a checkout
# is one through the symlink `make collection` puts under .cache/collections.
STAGED = ROOT.parent.parent.name == "ansible_collections"
COLLECTIONS = ROOT.parents[2] if STAGED else ROOT / ".cache" / "collections"
TOKEN = "neuron-secret-token"
ADMIN_KEY = "admin-secret-key"


def ansible_env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}",
                ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
                ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
                ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="default",
                ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")


def make_collection() -> None:
    if not STAGED:
        subprocess.run(["make", "-s", "collection"], cwd=ROOT, check=True)


class Served:
    """One app on 127.0.0.1:<free port> in a server thread."""

    def __init__(self, app) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        neuron = self.app.extensions.get("neuron")
        gateway = self.app.extensions.get("gateway")
        if neuron is not None:
            neuron.registry.shutdown()
        if gateway is not None:
            gateway.stop()
        self.server.shutdown()
        self.server.server_close()

    # a few neuron calls the tests make directly
    def call(self, method: str, path: str, body=None, token: str = TOKEN) -> dict:
        r = requests.request(method, self.url + path, json=body, timeout=120,
                             headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        return r.json()


def start_neuron(models_dir: Path, workdir: Path, *, fake_gpu: str | None = None) -> Served:
    from cortex.neuron.app import create_app
    from cortex.neuron.config import NeuronConfig
    from cortex.neuron.gpu import Device

    cfg = NeuronConfig(models_dir=str(models_dir), cache_dir=str(workdir / "cache"),
                       n_ctx=2048, n_threads=2)
    cfg = replace(cfg, auth_token=TOKEN)
    s = Served(create_app(cfg))
    if fake_gpu:
        # Hardware stand-in only: this neuron reports one CUDA device (its name is what the
        # inventory's gpu_<name> groups are built from); loads still run on the CPU.
        def snapshot(models_mb: int = 0) -> list[Device]:
            return [Device(index=0, name=fake_gpu, kind="cuda", vram_total_mb=81559,
                           vram_used_mb=1024 + models_mb, vram_free_mb=80535 - models_mb)]
        s.app.extensions["neuron"].devices.snapshot = snapshot
    return s


def start_gateway(neurons: dict[str, Served], workdir: Path) -> tuple[Served, Served]:
    """A gateway over the neurons, and its metrics listener."""
    from cortex.gateway.app import create_app, metrics_app
    from cortex.gateway.config import (
        EvictionSection,
        GatewayConfig,
        GatewaySection,
        ModelsConfig,
        NeuronEntry,
    )

    section = GatewaySection(state_dir=str(workdir / "gw-state"), poll_interval_secs=0.2,
                             neuron_token=TOKEN, admin_keys=[ADMIN_KEY],
                             connect_timeout_secs=1.0)
    cfg = GatewayConfig(gateway=section, eviction=EvictionSection(),
                        neurons=[NeuronEntry(name, n.url) for name, n in neurons.items()])
    gw = Served(create_app(cfg, ModelsConfig(models=[], aliases={})))
    metrics = Served(metrics_app(gw.app.extensions["gateway"].metrics.registry))
    return gw, metrics


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def models_dir_with_smollm2(d: Path) -> Path:
    """A models_dir holding smollm2.gguf (the real SmolLM2-135M) and a tiny model."""
    from cortex.testing.smollm2 import smollm2_path
    from cortex.testing.tiny_gguf import SCRIPTS, build_tiny_gguf

    d.mkdir(parents=True, exist_ok=True)
    build_tiny_gguf(d / "tiny-hello.gguf", script=SCRIPTS["hello"][0], name="tiny-hello")
    path = smollm2_path()
    if path is not None:
        (d / "smollm2.gguf").symlink_to(path)
    return d


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=ansible_env(), check=False)


def plain(value):
    """ansible-inventory's JSON with values marked unsafe ({"__ansible_unsafe": v}) as v."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def inventory_list(config: Path, *extra: str, raw: bool = False) -> dict:
    r = run([str(BIN / "ansible-inventory"), "-i", str(config), "--list", *extra])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "[WARNING]" not in r.stderr, r.stderr[-4000:]
    data = json.loads(r.stdout)
    return data if raw else plain(data)
