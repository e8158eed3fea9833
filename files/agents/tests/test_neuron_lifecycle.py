"""Loading, unloading, discovery and health through the neuron's HTTP API."""

from __future__ import annotations

import threading

from cortex.testing.tiny_gguf import SCRIPT_HELLO, script_text
from cortex.testing.waiting import wait_for


def test_discovery_reports_cpu_device_and_reason(neuron):
    d = neuron.get("/discovery").json()
    assert d["devices"][0]["kind"] == "cpu" and d["devices"][0]["vram_total_mb"] > 0
    assert d["gpu_count"] == 0
    assert d["cuda_unavailable_reason"]  # no NVML on this machine
    assert "llama_cpp" in d["harnesses"]
    assert d["hostname"] and d["kernel"]


def test_load_chat_unload(neuron):
    body = neuron.load("file:tiny-hello")
    assert body["status"] == "loaded" and body["model_id"] == "file:tiny-hello"
    models = {m["id"]: m for m in neuron.get("/models").json()}
    assert models["file:tiny-hello"]["status"] == "loaded"
    assert models["file:tiny-think"]["status"] == "available"
    r = neuron.chat("file:tiny-hello", temperature=0)
    assert r.json()["choices"][0]["message"]["content"] == script_text(SCRIPT_HELLO)
    r = neuron.post("/models/unload", {"model_id": "file:tiny-hello"})
    assert r.json() == {"status": "unloaded", "model_id": "file:tiny-hello"}
    assert neuron.chat("file:tiny-hello").status_code == 404
    assert neuron.post("/models/unload", {"model_id": "file:tiny-hello"}).status_code == 404


def test_load_twice_is_idempotent(neuron):
    assert neuron.load("file:tiny-hello")["already_loaded"] is False
    assert neuron.load("file:tiny-hello")["already_loaded"] is True


def test_concurrent_loads_are_single_flighted(neuron):
    results = []

    def go():
        results.append(neuron.post("/models/load", {"model_id": "file:tiny-loop"}).json())

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r["status"] == "loaded" for r in results)
    assert sum(not r["already_loaded"] for r in results) == 1
    samples = neuron.neuron.metrics.load_seconds.collect()[0].samples
    counts = [s.value for s in samples if s.name.endswith("_count")]
    assert counts == [1.0]


def test_quant_selection_in_a_folder(neuron):
    body = neuron.load("file:tiny-quants", quant="q8_0")
    assert body["model"]["quant"] == "Q8_0"
    assert body["model"]["file"] == "tiny-quants.Q8_0.gguf"


def test_quant_not_found_suggests_nearest(neuron):
    r = neuron.post("/models/load", {"model_id": "file:tiny-quants", "quant": "q80"})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["kind"] == "quant_not_found" and err["model_id"] == "file:tiny-quants"
    assert err["nearest"] == "Q8_0" and err["available"] == ["F16", "Q8_0"]
    assert err["requested"] == "q80"


def test_health_lists_models_with_figures(neuron):
    neuron.load("file:tiny-hello")
    neuron.chat("file:tiny-hello", temperature=0)
    h = neuron.get("/health").json()
    assert h["activation"]["state"] == "ready"
    (m,) = h["models"]
    assert m["id"] == "file:tiny-hello"
    assert m["in_flight"] == 0 and m["queue_depth"] == 0
    assert m["max_queue_depth"] == 8 and m["last_used"] > 0
    assert m["tok_s_prefill"] > 0
    assert h["devices"][0]["vram_used_mb"] >= m["vram_used_mb"] > 0


def test_health_lists_the_sessions_a_model_served_newest_last(neuron):
    """Gateways name a request's session in X-Helexa-Session; /health lists the tags with
    their age, so that every gateway sends a session's next turn where its prompt is."""
    neuron.load("file:tiny-hello")
    tags = ["a" * 16, "b" * 16, "c" * 32]
    for tag in [*tags, tags[0]]:
        r = neuron.post("/v1/chat/completions", {"model": "file:tiny-hello", "max_tokens": 2,
                        "messages": [{"role": "user", "content": "Hi"}]},
                        headers={"X-Helexa-Session": tag})
        assert r.status_code == 200, r.text
    # Not a tag (a client's raw session id, say): served, and not listed.
    for bad in ("my-session", "A" * 16, "a" * 65):
        r = neuron.post("/v1/chat/completions", {"model": "file:tiny-hello", "max_tokens": 2,
                        "messages": [{"role": "user", "content": "Hi"}]},
                        headers={"X-Helexa-Session": bad})
        assert r.status_code == 200, r.text
    (m,) = neuron.get("/health").json()["models"]
    assert list(m["sessions"]) == [tags[1], tags[2], tags[0]]  # newest last
    assert all(0 <= age < 30 for age in m["sessions"].values())
    assert m["sessions"][tags[0]] <= m["sessions"][tags[2]] <= m["sessions"][tags[1]]
    neuron.post("/models/unload", {"model_id": "file:tiny-hello"})
    neuron.load("file:tiny-hello")  # a new load holds no session
    assert neuron.get("/health").json()["models"][0]["sessions"] == {}


def test_prewarm_activation(neuron_factory):
    from cortex.neuron.config import DefaultModel

    n = neuron_factory(default_models=["file:tiny-hello", DefaultModel("file:nope"),
                                       "file:tiny-think"])
    wait_for(lambda: n.get("/health").json()["activation"]["state"] == "ready", "the pre-warm",
             30)
    act = n.get("/health").json()["activation"]
    assert act["completed"] == ["file:tiny-hello", "file:tiny-think"]
    assert act["failed"][0]["model_id"] == "file:nope"
    assert "no " in act["failed"][0]["error"]


def test_tied_embeddings_and_q8_models_generate(neuron):
    neuron.load("file:tiny-tied")
    r = neuron.chat("file:tiny-tied", max_tokens=4)
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 4
    assert r.json()["choices"][0]["finish_reason"] == "length"


def test_capabilities_and_endpoint(neuron):
    neuron.load("file:tiny-hello")
    caps = neuron.get("/models/file:tiny-hello/capabilities").json()
    assert caps["loaded"] is True and "chat" in caps["capabilities"]
    assert neuron.get("/models/file:tiny-hello/endpoint").json()["url"] == neuron.url + "/v1"


def test_drain_is_reported_and_survives_a_restart(neuron_factory, tmp_path):
    cache = str(tmp_path / "state")
    n = neuron_factory(cache_dir=cache)
    assert n.get("/health").json()["drained"] is False
    assert n.post("/drain", {"drained": True}).json() == {"drained": True, "in_flight": 0}
    assert n.get("/health").json()["drained"] is True
    again = neuron_factory(cache_dir=cache)  # a restarted neuron on the same disk
    assert again.get("/health").json()["drained"] is True
    again.post("/drain", {"drained": False})
    assert again.get("/health").json()["drained"] is False
    assert n.post("/drain", {"drained": "yes"}).status_code == 422


def test_ctransformers_engine_serves_plain_llama_and_explains_its_limits(neuron, models_dir,
                                                                         smollm2_file):
    """The optional engine (ctransformers 0.2.27, last released 2023-09) runs a plain
    llama GGUF; where it cannot (tied embeddings, newer archs) the neuron says so and
    names the alternative instead of passing on ctransformers' bare RuntimeError."""
    import shutil

    from cortex.testing.tiny_gguf import SCRIPT_HELLO, build_tiny_gguf, script_text

    assert "ctransformers" in neuron.get("/discovery").json()["harnesses"]
    neuron.load("file:tiny-hello", harness="ctransformers")
    body = neuron.chat("tiny-hello", temperature=0).json()
    assert body["choices"][0]["message"]["content"] == script_text(SCRIPT_HELLO)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert neuron.get("/models").json()[0]["harness"] == "ctransformers"
    neuron.post("/models/unload", {"model_id": "file:tiny-hello"})

    shutil.copy(smollm2_file, models_dir / "smol.gguf")  # tied embeddings
    build_tiny_gguf(models_dir / "tiny-qwen.gguf", script=SCRIPT_HELLO, arch="qwen2")
    try:
        r = neuron.post("/models/load", {"model_id": "file:smol", "harness": "ctransformers"})
        err = r.json()["error"]
        assert r.status_code == 422 and err["kind"] == "engine_load_failed"
        assert "llama_cpp" in err["detail"] and "2023" in err["detail"]
        r = neuron.post("/models/load", {"model_id": "file:tiny-qwen",
                                         "harness": "ctransformers"})
        assert "cannot run the 'qwen2' architecture" in r.json()["error"]["detail"]
    finally:
        (models_dir / "tiny-qwen.gguf").unlink()
        (models_dir / "smol.gguf").unlink()
    assert neuron.get("/health").json()["models"] == []  # nothing half-loaded


def test_health_answers_while_every_thread_could_be_busy(neuron_process):
    # gunicorn with 4 threads and 8 slow streams: /health (the gateways' poll) must still
    # answer, else a busy neuron is dropped as unhealthy. Work past the slots is a fast 503.
    import requests

    n = neuron_process("http_threads = 4\nn_ctx = 65536\n"
                       "[admission]\nmax_queue_depth = 16\nmax_wait_secs = 60\n")
    assert requests.post(n.url + "/models/load", json={"model_id": "file:tiny-long"},
                         timeout=120).status_code == 200
    results: list = []
    done = threading.Condition()

    def slow() -> None:
        try:
            r = requests.post(n.url + "/v1/chat/completions", stream=True, timeout=120, json={
                "model": "file:tiny-long", "max_tokens": 60000, "stream": True,
                "messages": [{"role": "user", "content": "Hi"}]})
        except requests.RequestException as exc:
            r = exc
        with done:
            results.append(r)
            done.notify_all()

    threads = [threading.Thread(target=slow, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        with done:  # as many answered as there are threads: every thread may be held now
            assert done.wait_for(lambda: len(results) >= 4, timeout=60)
        health = requests.get(n.url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert requests.get(n.url + "/metrics", timeout=10).status_code == 200
        with done:
            assert done.wait_for(lambda: len(results) == 8, timeout=60)
        busy = [r for r in results if r.status_code == 503]
        assert busy and busy[0].json()["error"]["code"] == "neuron_busy"
        assert busy[0].headers["Retry-After"] == "1"
        assert any(r.status_code == 200 for r in results)
    finally:
        for r in results:
            if isinstance(r, requests.Response):
                r.close()
        requests.post(n.url + "/models/unload", json={"model_id": "file:tiny-long"}, timeout=60)


def test_models_and_the_dashboard_show_a_default_neurons_slots(neuron, gateway):
    """`parallel = 0` (the default) gives a CPU host 4 slots: /models says so, and the
    dashboard's row for the model (read from /models) shows them."""
    from cortex.gateway.ui.views import state

    neuron.load("file:tiny-hello")
    (m,) = [m for m in neuron.get("/models").json() if m["id"] == "file:tiny-hello"]
    health = neuron.get("/health").json()["models"][0]
    assert m["slots"] == health["slots"]["total"] == 4
    gateway.gw.fleet.poll_all()
    (node,) = state(gateway.gw)["nodes"]
    assert [(row["id"], row["slots"]) for row in node["models"]] == [("file:tiny-hello", 4)]


def _gauge(neuron, name: str) -> float:
    """The sample `name{device="0"}` from /metrics (the scrape alone; no /health read)."""
    for line in neuron.get("/metrics").text.splitlines():
        if line.startswith(name + '{device="0"} '):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"/metrics has no {name} for device 0")


def test_device_memory_gauges_follow_loads_without_a_health_read(neuron):
    assert _gauge(neuron, "neuron_device_vram_used_mb") == 0
    assert _gauge(neuron, "neuron_device_vram_free_mb") > 0
    used = neuron.load("file:tiny-hello")["model"]["vram_used_mb"]
    assert _gauge(neuron, "neuron_device_vram_used_mb") == used > 0
    neuron.post("/models/unload", {"model_id": "file:tiny-hello"})
    assert _gauge(neuron, "neuron_device_vram_used_mb") == 0


def test_models_listed_as_an_unload_frees_one_is_not_a_500(neuron, monkeypatch):
    """/models lists the loaded models, then describes each: an unload finishing in
    between (it frees the engine's model) must leave a plain answer, not a 500."""
    neuron.load("file:tiny-hello")
    reg = neuron.neuron.registry

    class UnloadedOnceListed(dict):
        def values(self):
            listed = list(super().values())
            if "file:tiny-hello" in self:
                t = threading.Thread(target=reg.unload, args=("file:tiny-hello",))
                t.start()
                t.join(30)
            return listed

    monkeypatch.setattr(reg, "models", UnloadedOnceListed(reg.models))
    r = neuron.get("/models")
    assert r.status_code == 200, r.text
    assert "file:tiny-hello" not in reg.models  # the unload did finish in between
    (m,) = [m for m in r.json() if m["id"] == "file:tiny-hello"]
    assert m["capabilities"] == ["chat", "completion", "embeddings"]
    assert m["limit"]["context"] == 512
