"""`cortex load`, `cortex unload` and `cortex top`, run as an operator runs them: the
`cortex` command in a subprocess, against a real gateway over real neurons on loopback
(tiny GGUF models; a slow download from the test kit's hub for the progress bar).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cortex.gateway.config import ModelEntry, Replicas
from cortex.neuron.config import HubConfig
from cortex.testing.fake_hub import FakeHub
from cortex.testing.tiny_gguf import SCRIPT_HELLO, build_tiny_gguf
from cortex.testing.waiting import wait_for

ADMIN = "admin-cli-key"
BIN = Path(sys.executable).parent


def cortex(gw, *args: str, key: str = ADMIN, env: dict | None = None
           ) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "cortex"), *args, "--url", gw.url, "--admin-key", key],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "160", **(env or {})})


@pytest.fixture
def fleet3(neuron_factory, gateway_factory):
    neurons = {name: neuron_factory() for name in ("n1", "n2", "n3")}
    gw = gateway_factory(neurons, [ModelEntry("tiny-hello"), ModelEntry("tiny-tool")],
                         admin_keys=[ADMIN])
    wait_for(lambda: all(n.healthy for n in gw.gw.fleet.nodes.values()), "healthy nodes")
    return neurons, gw


def loaded_on(neurons: dict, load_id: str) -> list[str]:
    return sorted(name for name, n in neurons.items()
                  if load_id in n.neuron.registry.models)


def test_load_on_a_node_then_one_more_replica_then_unload(fleet3):
    neurons, gw = fleet3
    r = cortex(gw, "load", "tiny-hello", "--node", "n2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "tiny-hello: loaded on n2"
    assert loaded_on(neurons, "file:tiny-hello") == ["n2"]
    # No node named: one more replica, on a node without one.
    r = cortex(gw, "load", "tiny-hello", "--json")
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)["node"]
    assert second in ("n1", "n3") and loaded_on(neurons, "file:tiny-hello") == sorted(
        ["n2", second])
    r = cortex(gw, "unload", "tiny-hello", "--node", "n2")
    assert (r.returncode, r.stdout.strip()) == (0, "tiny-hello: unloaded from n2")
    assert loaded_on(neurons, "file:tiny-hello") == [second]
    r = cortex(gw, "unload", "tiny-hello")
    assert (r.returncode, r.stdout.strip()) == (0, f"tiny-hello: unloaded from {second}")
    assert loaded_on(neurons, "file:tiny-hello") == []


def test_load_everywhere_already_and_bad_input_say_why(fleet3):
    neurons, gw = fleet3
    for name in neurons:
        assert cortex(gw, "load", "tiny-tool", "--node", name).returncode == 0
    r = cortex(gw, "load", "tiny-tool")
    assert r.returncode == 1 and "loaded or loading on every healthy node" in r.stderr
    r = cortex(gw, "load", "no-such-model")
    assert r.returncode == 1 and "not in the catalogue" in r.stderr and "tiny-hello" in r.stderr
    r = cortex(gw, "load", "tiny-hello", "--node", "n9")
    assert r.returncode == 1 and "no node named 'n9'" in r.stderr
    r = cortex(gw, "unload", "tiny-hello", key="wrong")
    assert r.returncode == 1 and "CORTEX_ADMIN_KEY" in r.stderr


def test_top_shows_nodes_replicas_queues_and_scale_events(fleet3):
    neurons, gw = fleet3
    assert cortex(gw, "load", "tiny-hello").returncode == 0
    assert cortex(gw, "load", "tiny-hello").returncode == 0
    r = cortex(gw, "top", "--once")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "3/3 nodes healthy" in out
    for name in neurons:
        assert name in out
    row = next(line for line in out.splitlines() if line.strip("│ ").startswith("tiny-hello"))
    assert "│ 2 " in row and "0..3" in row  # two replicas of at most three
    assert out.count("operator") == 2 and "ok" in out  # the two loads, as scale events


def test_load_shows_the_download_and_load_progress(neuron_factory, gateway_factory, tmp_path,
                                                   small_hub_chunks):
    weights = build_tiny_gguf(tmp_path / "slow.Q8_0.gguf", script=SCRIPT_HELLO, ftype="Q8_0")
    with FakeHub({"acme/slow-GGUF": {"slow.Q8_0.gguf": weights}},
                 rate=weights.stat().st_size / 3) as hub:  # about 3 s on the wire
        neuron = neuron_factory(hf=HubConfig(endpoint=hub.url))
        gw = gateway_factory({"n1": neuron}, [ModelEntry("acme/slow-GGUF", source="hf",
                                                         replicas=Replicas(max=1))],
                             admin_keys=[ADMIN])
        # A terminal, as an operator has: rich draws the bar as it goes.
        r = cortex(gw, "load", "acme/slow-GGUF", env={"FORCE_COLOR": "1", "TTY_INTERACTIVE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "acme/slow-GGUF: loaded on n1"
    assert "acme/slow-GGUF on n1: downloading" in r.stderr
    shown = [int(p) for p in __import__("re").findall(r"(\d+)%", r.stderr)]
    assert len(set(shown)) >= 2 and shown[-1] == 100, shown  # it moved while we watched
    assert "MB" in r.stderr
