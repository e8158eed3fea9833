"""Models from the hub (`hf:org/name`) through huggingface_hub against a local hub server."""

from __future__ import annotations

import pytest

from cortex.neuron.config import HubConfig
from cortex.testing.fake_hub import FakeHub
from cortex.testing.tiny_gguf import SCRIPT_HELLO, build_tiny_gguf, script_text


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hubfiles")
    files = {}
    for ftype in ("F16", "Q8_0"):
        files[f"tiny.{ftype}.gguf"] = build_tiny_gguf(d / f"tiny.{ftype}.gguf",
                                                      script=SCRIPT_HELLO, ftype=ftype)
    return files


@pytest.fixture
def hub(hub_files):
    with FakeHub({
        "acme/tiny-GGUF": {**hub_files, "README.md": b"# tiny"},
        "acme/dense": {"model.safetensors": b"\0" * 64, "config.json": b"{}"},
        "acme/empty": {"README.md": b"nothing here"},
    }, gated={"acme/private-GGUF"}, token="hf_secret") as h:
        h.add_repo("acme/private-GGUF", hub_files, gated=True)
        yield h


def test_load_from_hub_downloads_once_and_serves(neuron_factory, hub, tmp_path):
    n = neuron_factory(hf=HubConfig(endpoint=hub.url))
    body = n.load("hf:acme/tiny-GGUF", quant="Q8_0")
    assert body["model_id"] == "hf:acme/tiny-GGUF" and body["model"]["quant"] == "Q8_0"
    assert hub.downloads[("acme/tiny-GGUF", "tiny.Q8_0.gguf")] == 1
    r = n.chat("hf:acme/tiny-GGUF", temperature=0)
    assert r.json()["choices"][0]["message"]["content"] == script_text(SCRIPT_HELLO)
    # Unload and load again: the cache serves the file, no second download.
    n.post("/models/unload", {"model_id": "acme/tiny-GGUF"})
    n.load("acme/tiny-GGUF", quant="q8_0")  # a bare org/name is a hub id
    assert hub.downloads[("acme/tiny-GGUF", "tiny.Q8_0.gguf")] == 1


def test_offline_mode_uses_the_cache_only(neuron_factory, hub):
    online = neuron_factory(hf=HubConfig(endpoint=hub.url))
    online.load("hf:acme/tiny-GGUF", quant="F16")
    cache = online.neuron.cfg.cache_dir
    offline = neuron_factory(hf=HubConfig(endpoint=hub.url, offline=True), cache_dir=cache)
    before = len(hub.requests)
    assert offline.load("hf:acme/tiny-GGUF", quant="F16")["status"] == "loaded"
    assert len(hub.requests) == before  # not one request
    r = offline.post("/models/load", {"model_id": "hf:acme/dense"})
    e = r.json()["error"]
    assert r.status_code == 422 and e["kind"] == "empty_repo"  # nothing of it is cached


def test_preflight_classifies_repos(neuron_factory, hub):
    n = neuron_factory(hf=HubConfig(endpoint=hub.url))
    r = n.post("/models/load", {"model_id": "hf:acme/dense"})
    assert r.status_code == 422 and r.json()["error"]["kind"] == "unsupported_format"
    r = n.post("/models/load", {"model_id": "hf:acme/empty"})
    assert r.json()["error"]["kind"] == "empty_repo"
    r = n.post("/models/load", {"model_id": "hf:acme/missing"})
    e = r.json()["error"]
    assert r.status_code == 422 and e["kind"] == "repo_fetch_failed"
    assert "RepositoryNotFound" in e["detail"]
    r = n.post("/models/load", {"model_id": "hf:acme/tiny-GGUF", "quant": "Q6K"})
    assert r.json()["error"]["nearest"] in ("F16", "Q8_0")
    assert not any(req.method == "GET" and req.server == "cdn"
                   for req in hub.requests)  # nothing was downloaded for refused loads


def test_gated_repo_needs_the_token_and_never_logs_it(neuron_factory, hub, caplog):
    n = neuron_factory(hf=HubConfig(endpoint=hub.url))
    r = n.post("/models/load", {"model_id": "hf:acme/private-GGUF", "quant": "F16"})
    assert r.status_code == 422 and r.json()["error"]["kind"] == "repo_fetch_failed"
    n2 = neuron_factory(hf=HubConfig(endpoint=hub.url, token="hf_secret"))
    assert n2.load("hf:acme/private-GGUF", quant="F16")["status"] == "loaded"
    assert any(req.authorization == "Bearer hf_secret" for req in hub.requests)
    assert "hf_secret" not in caplog.text
    assert "hf_secret" not in str(n2.get("/health").json())
