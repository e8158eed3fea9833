"""Fixtures: a real neuron (and gateway) on 127.0.0.1 over tiny GGUF models.

Needs the repo's .venv (the agents package ``cortex``). Run by ``make collection-test``
(ansible-test units, from the staged collection) or plainly: ``pytest tests/unit``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

# Any hub call goes to a closed local port, never out (huggingface_hub reads these at import).
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest

REPO = Path(__file__).resolve().parents[2]
if REPO.parent.parent.name == "ansible_collections":
    COLLECTIONS = REPO.parents[2]  # ansible-test's staged copy: a real collection tree
else:
    COLLECTIONS = REPO / ".cache" / "collections"  # a checkout: `make collection` links it
    if not (COLLECTIONS / "ansible_collections" / "helexa" / "cortex").exists():
        subprocess.run(["make", "-s", "collection"], cwd=REPO, check=True)
sys.path.insert(0, str(COLLECTIONS))

cortex = pytest.importorskip("cortex", reason="the agents package (make venv) is not installed")

from werkzeug.serving import make_server  # noqa: E402

TOKEN = "neuron-secret"
ADMIN = "admin-secret"


class Served:
    def __init__(self, app) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if "neuron" in self.app.extensions:
            self.app.extensions["neuron"].registry.shutdown()
        if "gateway" in self.app.extensions:
            self.app.extensions["gateway"].stop()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    from cortex.testing.tiny_gguf import SCRIPTS, build_tiny_gguf

    d = tmp_path_factory.mktemp("models")
    build_tiny_gguf(d / "tiny-hello.gguf", script=SCRIPTS["hello"][0], name="tiny-hello")
    build_tiny_gguf(d / "tiny-think.gguf", script=SCRIPTS["think"][0], name="tiny-think")
    repo = d / "tiny-quants"
    repo.mkdir()
    for ftype in ("F16", "Q8_0"):
        build_tiny_gguf(repo / f"tiny-quants.{ftype}.gguf", script=SCRIPTS["hello"][0],
                        ftype=ftype, name="tiny-quants")
    return d


@pytest.fixture
def neuron(models_dir, tmp_path):
    from cortex.neuron.app import create_app
    from cortex.neuron.config import NeuronConfig

    cfg = NeuronConfig(models_dir=str(models_dir), cache_dir=str(tmp_path / "cache"),
                       n_ctx=512, n_threads=2, auth_token=TOKEN)
    s = Served(create_app(cfg))
    s.token = TOKEN
    yield s
    s.close()


@pytest.fixture
def gateway(neuron, tmp_path):
    from cortex.gateway.app import create_app
    from cortex.gateway.config import (
        EvictionSection,
        GatewayConfig,
        GatewaySection,
        ModelsConfig,
        NeuronEntry,
    )

    section = GatewaySection(state_dir=str(tmp_path / "gw-state"), poll_interval_secs=0.2,
                             neuron_token=TOKEN, admin_keys=[ADMIN])
    cfg = GatewayConfig(gateway=section, eviction=EvictionSection(strategy="lru"),
                        neurons=[NeuronEntry("n1", neuron.url)])
    s = Served(create_app(cfg, ModelsConfig(models=[], aliases={})))
    s.token = ADMIN
    yield s
    s.close()
