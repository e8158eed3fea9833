"""A load reports its progress: hub download bytes, then llama.cpp's own progress callback,
on the neuron's /health and /models and on the gateway's /v1/models."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from cortex.core.errors import ApiError
from cortex.gateway.config import ModelEntry
from cortex.neuron.config import HubConfig
from cortex.neuron.engines.llama_cpp import LlamaCppEngine
from cortex.testing.fake_hub import FakeHub
from cortex.testing.tiny_gguf import SCRIPT_HELLO, build_tiny_gguf, script_text
from cortex.testing.waiting import wait_for


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

        def activated() -> dict | None:
            act = neuron.get("/health").json()["activation"]
            if act.get("progress"):
                assert act["in_progress"] == act["progress"]["model_id"] == "hf:acme/warm-GGUF"
                seen.append(act["progress"]["fraction"])
            return act if act["state"] == "ready" else None

        act = wait_for(activated, "the pre-warm", 60, 0.1)
    assert act["completed"] == ["hf:acme/warm-GGUF"] and "progress" not in act
    assert len(set(seen)) >= 2 and max(seen) > 0, seen


def route(gw, model: str):
    """The relay's routing of a streaming request for `model`: `Waiting` ticks (0.2 s apart)
    while a cold load runs, returning the replicas to try."""
    from cortex.gateway.auth import ANONYMOUS
    from cortex.gateway.relay.dispatch import Outbound

    gw.dispatcher.tick = 0.2
    req = Outbound("/v1/chat/completions", {"stream": True}, gw.catalogue.lookup(model), {},
                   ANONYMOUS)
    return gw.dispatcher.route(req, progress=True)


def routed(gw, model: str) -> tuple[list, list]:
    """(the ticks heard, the choices) of `route` run to its end."""
    ticks, steps = [], route(gw, model)
    while True:
        try:
            ticks.append(next(steps))
        except StopIteration as end:
            return ticks, end.value


def test_a_router_wait_on_a_cold_load_hears_its_progress(neuron_factory, gateway_factory,
                                                          tmp_path, small_hub_chunks):
    from cortex.gateway.coldwait import comment
    from cortex.gateway.placement import COLD, LEAST_BUSY
    from cortex.gateway.relay.coldload import Waiting

    weights = build_tiny_gguf(tmp_path / "cold.Q8_0.gguf", script=SCRIPT_HELLO, ftype="Q8_0")
    size = weights.stat().st_size
    with FakeHub({"acme/cold-GGUF": {"cold.Q8_0.gguf": weights}}, rate=size / 3) as hub:
        n1 = neuron_factory(hf=HubConfig(endpoint=hub.url))
        gw = gateway_factory({"n1": n1}, [ModelEntry(id="acme/cold-GGUF", source="hf")],
                             aliases={"cold": "acme/cold-GGUF"}).gw
        waits, choices = routed(gw, "cold")
        # A second request for the loaded model: its replica at once, no wait.
        again, loaded = routed(gw, "cold")
    assert [(c.node.name, c.reason) for c in choices] == [("n1", COLD)]
    assert waits and all(isinstance(w, Waiting) and w.model == "acme/cold-GGUF" for w in waits)
    downloading = [w.fraction for w in waits if w.phase == "downloading"]
    assert len(set(downloading)) >= 2 and downloading == sorted(downloading), waits
    assert all(w.node == "n1" for w in waits if w.phase != "waiting")
    assert b"loading acme/cold-GGUF: downloading" in b"".join(comment(w) for w in waits)
    assert again == [] and [(c.node.name, c.reason) for c in loaded] == [("n1", LEAST_BUSY)]


def test_a_waiter_that_gives_up_does_not_cancel_the_load(neuron_factory, gateway_factory,
                                                          tmp_path, small_hub_chunks):
    from cortex.gateway.relay.coldload import Waiting

    weights = build_tiny_gguf(tmp_path / "left.Q8_0.gguf", script=SCRIPT_HELLO, ftype="Q8_0")
    with FakeHub({"acme/left-GGUF": {"left.Q8_0.gguf": weights}},
                 rate=weights.stat().st_size / 2) as hub:
        n1 = neuron_factory(hf=HubConfig(endpoint=hub.url))
        gw = gateway_factory({"n1": n1}, [ModelEntry(id="acme/left-GGUF", source="hf")]).gw
        waiting = route(gw, "acme/left-GGUF")
        assert isinstance(next(waiting), Waiting)
        waiting.close()  # the client went away
        wait_for(lambda: any(m["id"] == "hf:acme/left-GGUF" and m["status"] == "loaded"
                             for m in n1.get("/models").json()),
                 "the load to finish (not abandoned)", 60, 0.1)
    # And an unknown model fails before any wait: the caller can still answer 404.
    with pytest.raises(ApiError) as err:
        next(route(gw, "no-such-model"))
    assert err.value.status == 404


def test_the_registry_feeds_the_engine_progress_into_the_load(neuron):
    from cortex.neuron.progress import LoadProgress
    from cortex.neuron.registry import LoadRequest
    from cortex.neuron.sources import parse_model_id

    reg = neuron.neuron.registry
    progress = LoadProgress("file:tiny-hello")
    # The load of a local file is too quick to watch from outside: follow it from within.
    loaded = reg._load("file:tiny-hello", parse_model_id("file:tiny-hello"),
                       LoadRequest("file:tiny-hello"), progress)
    snap = progress.snapshot()
    assert snap["phase"] == "loading" and snap["fraction"] == 1.0
    assert snap["bytes_total"] == snap["bytes_done"] == loaded.path.stat().st_size
    assert neuron.chat("file:tiny-hello").status_code == 200


COLD_STREAMS = {  # dialect: (path, body) of one streaming request for the cold model
    "openai": ("/v1/chat/completions",
               {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}),
    "anthropic": ("/v1/messages",
                  {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}),
    "responses": ("/v1/responses", {"input": "Hi", "max_output_tokens": 8}),
}


@pytest.mark.parametrize("dialect", list(COLD_STREAMS))
def test_a_stream_waiting_on_a_cold_load_hears_its_progress(dialect, neuron_factory,
                                                            gateway_factory, tmp_path,
                                                            small_hub_chunks, monkeypatch):
    from cortex.gateway.relay import dispatch

    monkeypatch.setattr(dispatch, "TICK_SECS", 0.2)
    weights = build_tiny_gguf(tmp_path / "cold.Q8_0.gguf", script=SCRIPT_HELLO, ftype="Q8_0")
    with FakeHub({"acme/cold-GGUF": {"cold.Q8_0.gguf": weights}},
                 rate=weights.stat().st_size / 2) as hub:
        n1 = neuron_factory(hf=HubConfig(endpoint=hub.url))
        gw = gateway_factory({"n1": n1}, [ModelEntry(id="acme/cold-GGUF", source="hf")])
        path, body = COLD_STREAMS[dialect]
        r = requests.post(gw.url + path, timeout=60, stream=True,
                          json=dict(body, model="acme/cold-GGUF", stream=True))
        assert r.status_code == 200, r.text
        lines = [line.decode() for line in r.iter_lines() if line]
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: {"))
    before = lines[:first_data]
    if dialect == "openai":  # SSE comments, then the neuron's own stream
        assert any(line.startswith(": loading acme/cold-GGUF: downloading") for line in before)
        assert lines[-1] == "data: [DONE]"
        assert script_text(SCRIPT_HELLO).startswith(_openai_text(lines))
    elif dialect == "anthropic":  # pings before message_start, then the whole message
        events = [line[7:] for line in lines if line.startswith("event: ")]
        start = events.index("message_start")
        assert start >= 2 and set(events[:start]) == {"ping"}, events[:start + 1]
        assert events[-1] == "message_stop"
    else:  # response.created, then response.in_progress on every tick, then the output
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
        kinds = [e["type"] for e in events]
        assert kinds[0] == "response.created"
        assert kinds[:kinds.index("response.output_item.added")].count(
            "response.in_progress") >= 3, kinds
        assert kinds[-1] == "response.completed"
        seqs = [e["sequence_number"] for e in events]
        assert seqs == list(range(len(seqs)))


def _openai_text(lines: list[str]) -> str:
    text = ""
    for line in lines:
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
    return text
