"""Fixtures: a real neuron (and gateway) on 127.0.0.1 over tiny GGUF models, and a runner for
ansible / ansible-playbook against localhost pointed at them.

Needs the repo's .venv (the agents package ``cortex``) and ``make collection``.
"""

from __future__ import annotations

import json
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
COLLECTIONS = REPO / ".cache" / "collections"
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


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_CALLBACK_PLUGINS=str(Path(__file__).parent / "callback"),
        ANSIBLE_STDOUT_CALLBACK="cortex_test_json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    )
    return env


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _results(proc) -> list[dict]:
    """Every task result (in order) from the json callback's output."""
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith('{"results"'):
            return [dict(r["result"], _task=r["task"]) for r in json.loads(line)["results"]]
    raise AssertionError(f"no JSON from ansible:\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture
def playbook(tmp_path):
    """Run a playbook (a list of tasks as YAML text) on localhost; return the task results."""

    def run(tasks: str, *args: str, vars: dict | None = None, rc: int | None = 0):
        pb = tmp_path / "pb.yml"
        pb.write_text("- hosts: localhost\n  connection: local\n  gather_facts: false\n"
                      "  tasks:\n" + "\n".join("    " + line for line in tasks.splitlines())
                      + "\n")
        cmd = [_bin("ansible-playbook"), "-i", "localhost,", str(pb),
               "-e", f"ansible_python_interpreter={sys.executable}",
               "-e", json.dumps(vars or {}), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
        if rc is not None:
            assert proc.returncode == rc, proc.stdout + proc.stderr
        return _results(proc)

    return run


@pytest.fixture
def adhoc():
    """Run ``ansible localhost -m MODULE -a ARGS``; return (rc, result)."""

    def run(module: str, args: str, *extra: str):
        cmd = [_bin("ansible"), "localhost", "-i", "localhost,", "-c", "local",
               "-e", f"ansible_python_interpreter={sys.executable}", "-m", module, "-a", args,
               *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
        return proc.returncode, _results(proc)[0]

    return run
