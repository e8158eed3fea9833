"""A load reports its progress: hub download bytes, then llama.cpp's own progress callback,
on the neuron's /health and /models and on the gateway's /v1/models."""

from __future__ import annotations

import threading
import time

import requests

from cortex.gateway.config import ModelEntry
from cortex.neuron.config import HubConfig
from cortex.neuron.engines.llama_cpp import LlamaCppEngine
from cortex.testing.fake_hub import FakeHub
from cortex.testing.tiny_gguf import SCRIPT_HELLO, build_tiny_gguf, script_text


def test_engine_load_reports_progress_up_to_one(models_dir):
    seen: list[float] = []
    model = LlamaCppEngine().load(models_dir / "tiny-hello.gguf", n_ctx=256, n_threads=1,
                                  n_gpu_layers=0, devices=[], has_gpu=False,
                                  progress=seen.append)
    try:
        assert len(seen) >= 2 and seen == sorted(seen) and seen[-1] == 1.0
    finally:
        model.close()
    # A load that asked for nothing gets the defaults (no callback left behind).
    heard = len(seen)
    other = LlamaCppEngine().load(models_dir / "tiny-hello.gguf", n_ctx=256, n_threads=1,
                                  n_gpu_layers=0, devices=[], has_gpu=False)
    other.close()
    assert len(seen) == heard


def test_a_slow_download_shows_increasing_progress(neuron_factory, gateway_factory, tmp_path,
                                                  small_hub_chunks):
    weights = build_tiny_gguf(tmp_path / "slow.Q8_0.gguf", script=SCRIPT_HELLO, ftype="Q8_0")
    size = weights.stat().st_size
    # About 3 s on the wire: long enough to watch several polls of it.
    with FakeHub({"acme/slow-GGUF": {"slow.Q8_0.gguf": weights}}, rate=size / 3) as hub:
        neuron = neuron_factory(hf=HubConfig(endpoint=hub.url))
        gw = gateway_factory({"n1": neuron}, [ModelEntry(id="acme/slow-GGUF", source="hf",
                                                          harness="llama_cpp")])
        done: dict = {}
        loader = threading.Thread(target=lambda: done.update(
            r=neuron.post("/models/load", {"model_id": "hf:acme/slow-GGUF"})), daemon=True)
        loader.start()
        health_seen, models_seen, gateway_seen = [], [], []
        deadline = time.monotonic() + 60
        while loader.is_alive():
            assert time.monotonic() < deadline, "the load did not finish in 60 s"
            h = neuron.get("/health").json()
            p = h["load_progress"].get("hf:acme/slow-GGUF")
            if p is not None:
                assert "hf:acme/slow-GGUF" in h["loading"]
                health_seen.append(p)
            for m in neuron.get("/models").json():
                if m["id"] == "hf:acme/slow-GGUF" and m["status"] == "loading":
                    models_seen.append(m.get("progress"))
            for m in requests.get(gw.url + "/v1/models", timeout=10).json()["data"]:
                for loc in m["locations"] if m["id"] == "acme/slow-GGUF" else []:
                    if loc["status"] == "loading":
                        gateway_seen.append(loc.get("progress"))
            time.sleep(0.1)  # sampling the progress, not waiting for it
        loader.join()
    assert done["r"].status_code == 200, done["r"].text
    downloading = [p for p in health_seen if p["phase"] == "downloading"]
    fractions = [p["fraction"] for p in downloading]
    assert len(set(fractions)) >= 3, fractions  # it moved while we watched
    assert fractions == sorted(fractions) and 0 < fractions[-1] <= 1
    assert all(p["bytes_total"] == size for p in downloading)
    assert [p["bytes_done"] for p in downloading] == sorted(p["bytes_done"] for p in downloading)
    assert any(p["eta_secs"] is not None and p["eta_secs"] > 0 for p in downloading)
    assert any(p and p["phase"] == "downloading" for p in models_seen)
    assert any(p and 0 < p["fraction"] < 1 for p in gateway_seen), gateway_seen
    # Done: nothing is loading any more, and the model answers.
    h = neuron.get("/health").json()
    assert h["load_progress"] == {} and h["loading"] == []
    r = neuron.chat("hf:acme/slow-GGUF", temperature=0)
    assert r.json()["choices"][0]["message"]["content"] == script_text(SCRIPT_HELLO)


def test_prewarm_progress_shows_in_activation(neuron_factory, tmp_path, small_hub_chunks):
    weights = build_tiny_gguf(tmp_path / "warm.F16.gguf", script=SCRIPT_HELLO)
    size = weights.stat().st_size
    with FakeHub({"acme/warm-GGUF": {"warm.F16.gguf": weights}}, rate=size / 2) as hub:
        neuron = neuron_factory(hf=HubConfig(endpoint=hub.url),
                                default_models=["hf:acme/warm-GGUF"])
        seen = []
        deadline = time.monotonic() + 60
        while True:
            act = neuron.get("/health").json()["activation"]
            if act["state"] == "ready":
                break
            assert time.monotonic() < deadline, act
            if act.get("progress"):
                assert act["in_progress"] == act["progress"]["model_id"] == "hf:acme/warm-GGUF"
                seen.append(act["progress"]["fraction"])
            time.sleep(0.1)
    assert act["completed"] == ["hf:acme/warm-GGUF"] and "progress" not in act
    assert len(set(seen)) >= 2 and max(seen) > 0, seen
