"""Continuous batching: several requests on one model at once, each on its own slot."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from cortex.core.errors import Unavailable
from cortex.neuron.config import AdmissionConfig
from cortex.neuron.engines.base import GenerationRequest
from cortex.neuron.engines.llama_cpp import LlamaCppEngine
from cortex.testing.waiting import wait_for

LONG = "file:tiny-long"
MSG = [{"role": "user", "content": "Hi"}]
QUESTIONS = ["What is the capital of France? Answer in one word.", "Name a colour of the sky.",
             "What is 2 + 2?", "Say hello in Spanish."]


def err(r, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


@pytest.fixture(scope="module")
def smol_dir(smollm2_file: Path, models_factory) -> Path:
    return models_factory(smollm2=True)


@pytest.fixture
def smol(neuron_factory, smol_dir):
    def make(parallel: int):
        n = neuron_factory(models_dir=str(smol_dir), n_ctx=512, parallel=parallel)
        n.load("file:smollm2")
        return n

    return make


def _chat_in_thread(n, results: dict, key, **body):
    def run():
        results[key] = n.post("/v1/chat/completions", {"model": body.pop("model", LONG),
                                                       "messages": body.pop("messages", MSG),
                                                       **body})

    t = threading.Thread(target=run)
    t.start()
    return t


def _batch_counts(n, model: str, le: int = 1) -> tuple[float, float]:
    """(steps with `le` sequences or fewer, all steps) from the batch-size histogram."""
    text = n.get("/metrics").text
    one = re.search(rf'neuron_batch_sequences_bucket{{le="{le}.0",model="{model}"}} (\S+)',
                    text)
    total = re.search(rf'neuron_batch_sequences_count{{model="{model}"}} (\S+)', text)
    return float(one.group(1)), float(total.group(1))


def test_concurrent_streams_all_complete(smol):
    n = smol(parallel=4)
    client = OpenAI(base_url=n.url + "/v1", api_key="x")
    out: dict[int, str] = {}
    finish: dict[int, str] = {}
    gate = threading.Barrier(len(QUESTIONS))

    def stream(i: int) -> None:
        gate.wait()
        parts = []
        for chunk in client.chat.completions.create(
                model="file:smollm2", messages=[{"role": "user", "content": QUESTIONS[i]}],
                stream=True, temperature=0, max_tokens=24):
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                finish[i] = chunk.choices[0].finish_reason or finish.get(i)
        out[i] = "".join(parts)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(out) == set(range(len(QUESTIONS)))
    assert all(text.strip() for text in out.values()), out
    assert all(finish[i] in ("stop", "length") for i in out), finish
    assert "Paris" in out[0]
    one, total = _batch_counts(n, "file:smollm2")
    assert total > one, "no step decoded more than one sequence"
    m = n.get("/health").json()["models"][0]
    assert m["slots"] == {"busy": 0, "total": 4} and m["max_in_flight"] == 4
    assert m["tok_s_decode_aggregate"] > 0


@pytest.mark.parametrize("parallel", [4, 3])
def test_a_burst_on_an_idle_model_starts_in_one_step(neuron_factory, parallel):
    # Sent at once, the requests are prefilled together: no step runs fewer than all of
    # them (they all end at max_tokens together). With a full set of slots nothing waits
    # for the gather window's end; with more requests than slots, the extra one queues.
    n = neuron_factory(n_ctx=2048, parallel=parallel,
                       admission=AdmissionConfig(gather_ms=300))
    n.load(LONG)
    res: dict = {}
    gate = threading.Barrier(4)

    def run(i: int) -> None:
        gate.wait()
        res[i] = n.chat(LONG, max_tokens=6)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 6
               for r in res.values()), res
    fewer, total = _batch_counts(n, LONG, le=parallel - 1)
    if parallel == 4:
        assert total == 6 and fewer == 0, (fewer, total)
    else:  # three together, then the fourth alone once a slot is free
        assert total == 12 and fewer == 6, (fewer, total)


def test_a_step_feeds_the_sequences_in_slot_order(models_dir: Path):
    # llama.cpp cuts a batch over the split (per-sequence) KV cache into ubatches of
    # consecutive sequence ids: fed out of order, one decode step ran as several graphs.
    model = LlamaCppEngine().load(models_dir / "tiny-long.gguf", n_ctx=128, n_threads=1,
                                  n_gpu_layers=0, devices=[], has_gpu=False, n_slots=3)
    try:
        seqs = [model.begin(slot, GenerationRequest(prompt_tokens=[1, 2, 3], max_tokens=4,
                                                    temperature=0))
                for slot in (2, 0, 1)]
        for _ in range(2):  # the prompts, then one token each
            model.step(seqs)
            b = model._batch
            assert [b.seq_id[i][0] for i in range(b.n_tokens)] == sorted(
                b.seq_id[i][0] for i in range(b.n_tokens))
        assert b.n_tokens == 3
    finally:
        model.close()


def test_a_new_request_fills_the_gap_between_running_ones(neuron_factory):
    # llama.cpp decodes a split KV cache in ubatches of consecutive sequence ids: with the
    # running slots 0 and 2, a request on slot 3 (unused, so least recently used) would
    # cost every step two graphs; on slot 1 it costs one.
    n = neuron_factory(n_ctx=65536, parallel=4, admission=AdmissionConfig(gather_ms=0))
    n.load(LONG)
    sched = n.neuron.registry.models[LONG].scheduler
    res: dict = {}
    threads = []

    def start(key: str, running: int) -> None:
        threads.append(_chat_in_thread(n, res, key, max_tokens=60000,
                                       messages=[{"role": "user", "content": f"Hi {key}"}]))
        wait_for(lambda: sched.in_flight == running or key in res, f"{running} running", 30)
        assert key not in res, res[key].text

    start("a", 1)
    with requests.post(n.url + "/v1/chat/completions", stream=True, timeout=30, json={
            "model": LONG, "max_tokens": 60000, "stream": True,
            "messages": [{"role": "user", "content": "Hi b"}]}) as b:
        lines = b.iter_lines()  # (held: a generator let go of closes the stream)
        next(lines)
        wait_for(lambda: sched.in_flight == 2, "2 running", 30)
        start("c", 3)
        assert sorted(sched._active) == [0, 1, 2]
    wait_for(lambda: sched.in_flight == 2, "b cancelled once its client left", 30)
    assert sorted(sched._active) == [0, 2]
    start("d", 3)
    assert sorted(sched._active) == [0, 1, 2]
    n.post("/models/unload", {"model_id": LONG})
    for t in threads:
        t.join()


def test_a_request_joins_a_busy_batch(neuron_factory):
    n = neuron_factory(n_ctx=65536, parallel=2)
    n.load(LONG)
    sched = n.neuron.registry.models[LONG].scheduler
    res: dict = {}
    t = _chat_in_thread(n, res, "long", max_tokens=60000)
    wait_for(lambda: sched.in_flight == 1, "sched.in_flight == 1", 30)
    r = n.chat(LONG, max_tokens=5)  # answered while the long one keeps generating
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    assert sched.in_flight == 1 and t.is_alive()
    n.post("/models/unload", {"model_id": LONG})
    t.join()
    err(res["long"], 503, "model_unloaded")


def test_a_cancelled_stream_frees_its_slot_while_others_go_on(neuron_factory):
    n = neuron_factory(n_ctx=65536, parallel=2)
    n.load(LONG)
    sched = n.neuron.registry.models[LONG].scheduler
    res: dict = {}
    t = _chat_in_thread(n, res, "other", max_tokens=60000)
    wait_for(lambda: sched.in_flight == 1, "sched.in_flight == 1", 30)
    s = n.hold("/v1/chat/completions", {"model": LONG, "stream": True, "max_tokens": 60000,
                                        "messages": MSG})
    wait_for(lambda: sched.in_flight == 2, "sched.in_flight == 2", 30)
    s.close()
    wait_for(lambda: sched.in_flight == 1, "sched.in_flight == 1", 30)
    assert t.is_alive()  # the other stream goes on
    produced = n.neuron.metrics.completion_tokens.labels(LONG)._value.get()
    r = n.chat(LONG, max_tokens=3)  # the freed slot takes a new request
    assert r.status_code == 200
    assert n.neuron.metrics.completion_tokens.labels(LONG)._value.get() >= produced + 3
    n.post("/models/unload", {"model_id": LONG})
    t.join()
    err(res["other"], 503, "model_unloaded")


def test_unload_during_generation_is_clean(neuron_factory):
    n = neuron_factory(n_ctx=65536, parallel=2)
    n.load(LONG)
    loaded = n.neuron.registry.models[LONG]
    sched = loaded.scheduler
    res: dict = {}
    threads = [_chat_in_thread(n, res, i, max_tokens=60000) for i in range(2)]
    wait_for(lambda: sched.in_flight == 2, "sched.in_flight == 2", 30)
    threads.append(_chat_in_thread(n, res, "queued", max_tokens=5))
    wait_for(lambda: sched.queue_depth == 1, "sched.queue_depth == 1", 30)
    assert n.post("/models/unload", {"model_id": LONG}).status_code == 200
    assert not sched.alive  # the scheduler thread exited before the context was freed
    for t in threads:
        t.join()
    for r in res.values():
        err(r, 503, "model_unloaded")
    assert n.get("/health").json()["models"] == []
    n.load(LONG)
    assert n.chat(LONG, max_tokens=2).status_code == 200


def test_unload_waits_for_a_tokenize_lease(neuron_factory):
    """Issue 12: tokenize/template calls ran outside any lease, so an unload could free the
    model under them. Now an unload waits for the lease; new leases are refused."""
    n = neuron_factory()
    n.load("file:tiny-hello")
    loaded = n.neuron.registry.models["file:tiny-hello"]
    done = threading.Event()
    with loaded.lease() as model:
        t = threading.Thread(target=lambda: (n.neuron.registry.unload("file:tiny-hello"),
                                             done.set()))
        t.start()
        wait_for(lambda: loaded._closing, "loaded._closing", 30)
        assert not done.wait(0.5)  # still waiting for this lease
        assert model.tokenize("still usable", add_bos=False)  # not freed under us
        with pytest.raises(Unavailable), loaded.lease():
            pass
    t.join(10)
    assert done.is_set()
    r = n.post("/tokenize", {"model": "tiny-hello", "messages": MSG})
    err(r, 404, "model_not_found")


def test_sampling_settings_stay_per_request(smol):
    """A greedy request gives the same text alone and beside a hot, seeded one; the seeded
    one gives the same text beside a greedy request as alone (batch of 2 both times)."""
    n = smol(parallel=2)
    greedy = {"model": "file:smollm2", "temperature": 0, "max_tokens": 16,
              "messages": [{"role": "user", "content": QUESTIONS[0]}]}
    hot = {"model": "file:smollm2", "temperature": 1.5, "top_k": 0, "top_p": 1, "seed": 11,
           "max_tokens": 16, "messages": [{"role": "user", "content": QUESTIONS[3]}]}

    def text(r):
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    alone_greedy = text(n.post("/v1/chat/completions", greedy))
    alone_hot = text(n.post("/v1/chat/completions", hot))
    res: dict = {}
    gate = threading.Barrier(2)
    threads = []
    for key, body in (("greedy", greedy), ("hot", hot)):
        def run(key=key, body=body):
            gate.wait()
            res[key] = n.post("/v1/chat/completions", body)
        threads.append(threading.Thread(target=run))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert text(res["greedy"]) == alone_greedy
    assert text(res["hot"]) == alone_hot


def test_prefix_reuse_across_turns_picks_the_conversation_slot(smol):
    n = smol(parallel=4)
    turn1 = [{"role": "user", "content": QUESTIONS[0]}]
    r1 = n.post("/v1/chat/completions", {"model": "file:smollm2", "messages": turn1,
                                         "temperature": 0, "max_tokens": 12}).json()
    # Another conversation in between must not take (and evict) the first one's slot.
    other = n.post("/v1/chat/completions", {
        "model": "file:smollm2", "messages": [{"role": "user", "content": QUESTIONS[2]}],
        "temperature": 0, "max_tokens": 4}).json()
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # an empty slot
    turn2 = [*turn1, r1["choices"][0]["message"],
             {"role": "user", "content": "And of Spain?"}]
    r2 = n.post("/v1/chat/completions", {"model": "file:smollm2", "messages": turn2,
                                         "temperature": 0, "max_tokens": 4}).json()
    cached = r2["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert r1["usage"]["prompt_tokens"] <= cached < r2["usage"]["prompt_tokens"]
    assert r2["helexa_timing"]["prefill_tokens"] == r2["usage"]["prompt_tokens"] - cached


def test_parallel_per_load_and_its_validation(neuron_factory):
    n = neuron_factory(parallel=3)
    assert n.load("file:tiny-hello")["model"]["slots"] == 3
    assert n.load("file:tiny-think", parallel=1)["model"]["slots"] == 1
    r = n.post("/models/load", {"model_id": "file:tiny-tool", "parallel": -1})
    assert r.status_code == 422 and r.json()["error"]["param"] == "parallel"
    r = n.post("/models/load", {"model_id": "file:tiny-tool", "parallel": "4"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "parallel"
    metrics = n.get("/metrics").text
    assert 'neuron_model_slots{model="file:tiny-hello"} 3.0' in metrics


def test_an_empty_prompt_is_400_and_leaves_the_slots_free(neuron):
    neuron.load("file:tiny-hello")
    r = neuron.post("/v1/completions", {"model": "tiny-hello", "prompt": "", "max_tokens": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert neuron.neuron.registry.models["file:tiny-hello"].scheduler.in_flight == 0
    assert neuron.chat("tiny-hello", max_tokens=3).status_code == 200
