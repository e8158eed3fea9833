"""Real apps on loopback, each in a werkzeug server thread of the test process.

`Served` runs any WSGI app; `serve_neuron` and `serve_gateway` build the real neuron and
gateway apps from their config objects and serve them. A test reaches a served app with
real HTTP clients (requests, openai, anthropic, ansible-playbook) and, where it checks
what a user cannot see, through the app's own objects (`.neuron`, `.gw`).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import make_server


class Served:
    """A real HTTP server on `host` (an ephemeral port) running one app in a thread."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1",
                 request_handler: type | None = None) -> None:
        self.app, self.host = app, host
        extra = {"request_handler": request_handler} if request_handler else {}
        self.server = make_server(host, 0, app, threaded=True, **extra)
        self.port = self.server.server_port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.http = requests.Session()
        self.token = ""  # the bearer token `call` sends (a neuron's auth_token)
        self.closed = False

    @property
    def neuron(self) -> Any:
        """The neuron app's state (registry, metrics, devices)."""
        return self.app.extensions["neuron"]

    @property
    def gw(self) -> Any:
        """The gateway app's composition root (fleet, router, auth, metrics)."""
        return self.app.extensions["gateway"]

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.http.post(self.url + path, json=json, timeout=60, **kw)

    def load(self, model_id: str, **extra: Any) -> dict:
        r = self.post("/models/load", {"model_id": model_id, **extra})
        assert r.status_code == 200, r.text
        return r.json()

    def chat(self, model: str, content: str = "Hi", **extra: Any) -> requests.Response:
        return self.post("/v1/chat/completions",
                         {"model": model, "messages": [{"role": "user", "content": content}],
                          **extra})

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One call with this server's token; the JSON of a 200 (anything else fails)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        r = self.http.request(method, self.url + path, json=body, timeout=120, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    def hold(self, path: str, body: Any) -> socket.socket:
        """POST `body` on a connection of its own and read no more than the reply's status:
        the test keeps the connection open, or closes it as a client that hangs up would."""
        data = json.dumps(body).encode()
        conn = socket.create_connection((self.host, self.port))
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        status = conn.recv(4096).split(b"\r\n", 1)[0]
        assert b" 200 " in status, status
        return conn

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        extensions = getattr(self.app, "extensions", {})
        if "neuron" in extensions:
            self.neuron.registry.shutdown()
        if "gateway" in extensions:
            self.gw.stop()
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


ServedGateway = Served  # the name older tests import a served gateway by


def serve_neuron(models_dir: Path, cache_dir: Path, *, fake_gpu: str | None = None,
                 **settings: Any) -> Served:
    """The neuron app over `models_dir` (small contexts, two threads; `settings` are
    NeuronConfig fields). `fake_gpu`: the neuron reports one CUDA device of that name."""
    from cortex.neuron.app import create_app
    from cortex.neuron.config import NeuronConfig

    cfg = replace(NeuronConfig(models_dir=str(models_dir), cache_dir=str(cache_dir),
                               n_ctx=512, n_threads=2), **settings)
    s = Served(create_app(cfg))
    s.token = cfg.auth_token
    if fake_gpu:
        _fake_gpu(s, fake_gpu)
    return s


def _fake_gpu(neuron: Served, name: str) -> None:
    """A hardware stand-in only: one CUDA device of this name (what the inventory's
    gpu_<name> groups are built from); loads still run on the CPU."""
    from cortex.neuron.gpu import Device

    def snapshot(models_mb: int = 0) -> list[Device]:
        return [Device(index=0, name=name, kind="cuda", vram_total_mb=81559,
                       vram_used_mb=1024 + models_mb, vram_free_mb=80535 - models_mb)]

    neuron.neuron.devices.snapshot = snapshot


def serve_gateway(neurons: Mapping[str, Any], state_dir: Path, models: list | None = None, *,
                  aliases: Mapping[str, str] | None = None, strategy: str = "lru",
                  defrag_after_cycles: int = 0, entitlements: Any = None,
                  routing: Any = None, **gateway: Any) -> Served:
    """The gateway app over `neurons` (name: anything with a `.url`) and the catalogue
    `models` (ModelEntry list); `strategy` and `defrag_after_cycles` are [eviction]'s,
    `routing` a RoutingSection (default: affinity), `gateway` are GatewaySection fields
    (polls every 0.2 s)."""
    from cortex.gateway.app import create_app
    from cortex.gateway.config import (
        EntitlementsSection,
        EvictionSection,
        GatewayConfig,
        GatewaySection,
        ModelsConfig,
        NeuronEntry,
        RoutingSection,
    )

    section = GatewaySection(**{"state_dir": str(state_dir), "poll_interval_secs": 0.2,
                                **gateway})
    cfg = GatewayConfig(gateway=section, eviction=EvictionSection(
        strategy=strategy, defrag_after_cycles=defrag_after_cycles),
                        neurons=[NeuronEntry(name, n.url) for name, n in neurons.items()],
                        entitlements=entitlements or EntitlementsSection(),
                        routing=routing or RoutingSection())
    return Served(create_app(cfg, ModelsConfig(models=models or [], aliases=dict(aliases or {}))))


def serve_metrics(gateway: Served) -> Served:
    """The gateway's metrics listener (what `metrics_listen` serves) for a served gateway."""
    from cortex.gateway.app import metrics_app

    return Served(metrics_app(gateway.gw.metrics.registry))
