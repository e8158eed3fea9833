"""Sessions stay warm: more conversations than slots, their earlier prompts restored from the
session cache (host RAM, disk) instead of prefilled again, and restored exactly."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cortex.gateway.config import ModelEntry
from cortex.neuron.config import AdmissionConfig, CacheConfig
from cortex.neuron.engines.llama_cpp import LlamaCppEngine
from cortex.neuron.session_cache import BLOCK_TOKENS, SessionCache
from cortex.testing.decode import greedy
from cortex.testing.waiting import wait_for

HELLO = "file:tiny-hello"
WORDS = ["the", "a", "an", "is", "of", "to", "and", "in", "it", "you", "what", "how",
         "hello", "world", "capital", "France", "Paris", "I"]


def story(seed: int, words: int) -> str:
    """Distinct text per seed, of tiny-model vocabulary."""
    return " ".join(WORDS[(seed * 7 + i * (seed + 3)) % len(WORDS)] for i in range(words))


def chat(n, messages: list[dict], *, account: str = "", model: str = HELLO,
         max_tokens: int = 6, **extra) -> dict:
    headers = {"X-Helexa-Account-Id": account} if account else {}
    r = n.post("/v1/chat/completions", {"model": model, "messages": messages,
                                        "max_tokens": max_tokens, "temperature": 0, **extra},
               headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def cached(reply: dict) -> int:
    return reply["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_many_sessions_over_few_slots_stay_warm_under_concurrency(neuron_factory):
    # Six conversations over two slots, three turns each, every round's turns at once:
    # saves and restores interleave on the scheduler thread. Each later turn reuses its
    # earlier prompt but for the last partial block; nothing is lost, nothing mixed up.
    n = neuron_factory(parallel=2, n_ctx=4096,
                       admission=AdmissionConfig(max_queue_depth=16, max_per_principal=4))
    n.load(HELLO)
    sessions = {i: [{"role": "system", "content": story(i, 250)}] for i in range(6)}
    prompt_tokens: dict[int, int] = {}
    for turn in range(3):
        replies: dict[int, dict] = {}

        def run(i: int, turn: int = turn, replies: dict = replies) -> None:
            sessions[i].append({"role": "user", "content": f"turn {turn} of {story(i, 9)}"})
            replies[i] = chat(n, sessions[i], account=f"acct{i % 3}")

        threads = [threading.Thread(target=run, args=(i,)) for i in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(replies) == list(sessions)
        for i, reply in replies.items():
            assert reply["choices"][0]["message"]["content"] == "Hello from tiny cortex."
            if turn:
                assert cached(reply) >= prompt_tokens[i] - BLOCK_TOKENS, (i, turn, reply)
            prompt_tokens[i] = reply["usage"]["prompt_tokens"]
            sessions[i].append(reply["choices"][0]["message"])
    health = n.get("/health").json()["cache"]
    # Of each round's six later turns, at most two find their session still in its slot.
    assert health["restores"] >= 8 and health["hits"] >= 8, health
    assert health["ram"]["used_mb"] <= health["ram"]["budget_mb"]
    metrics = n.get("/metrics").text
    assert "neuron_session_cache_restored_tokens_total" in metrics
    assert 'neuron_session_cache_bytes{tier="ram"}' in metrics
    totals = health_model(n)
    assert totals["cached_tokens_total"] > totals["prompt_tokens_total"] / 2


def health_model(n) -> dict:
    return n.get("/health").json()["models"][0]


def test_reload_restores_only_into_the_same_file_and_parameters(neuron_factory):
    n = neuron_factory(parallel=1, n_ctx=2048)
    prompt = [{"role": "system", "content": story(1, 300)}, {"role": "user", "content": "hi"}]
    n.load("file:tiny-quants", quant="F16")
    assert cached(chat(n, prompt, model="file:tiny-quants")) == 0
    n.post("/models/unload", {"model_id": "file:tiny-quants"})  # the slot is saved
    n.load("file:tiny-quants", quant="Q8_0")  # another file: nothing of F16's is valid
    assert cached(chat(n, prompt, model="file:tiny-quants")) == 0
    n.post("/models/unload", {"model_id": "file:tiny-quants"})
    n.load("file:tiny-quants", quant="F16")  # the same file again: a fresh context, warm
    reply = chat(n, prompt, model="file:tiny-quants")
    assert cached(reply) >= reply["usage"]["prompt_tokens"] - BLOCK_TOKENS


def test_unload_under_load_then_reload_stays_correct(neuron_factory):
    # Streams running and requests queued when the model goes: they fail cleanly, the
    # slots are saved after the scheduler thread has stopped, and a reload restores.
    n = neuron_factory(parallel=2, n_ctx=65536)
    n.load("file:tiny-long")
    sched = n.neuron.registry.models["file:tiny-long"].scheduler
    prompts = [[{"role": "user", "content": story(i, 200)}] for i in range(4)]
    results: dict[int, int] = {}

    def run(i: int) -> None:
        r = n.post("/v1/chat/completions", {"model": "file:tiny-long", "messages": prompts[i],
                                            "max_tokens": 60000})
        results[i] = r.status_code

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: sched.in_flight == 2 and sched.queue_depth == 2, "2 running, 2 queued", 30)
    assert n.post("/models/unload", {"model_id": "file:tiny-long"}).status_code == 200
    for t in threads:
        t.join()
    assert sorted(results.values()) == [503] * 4
    n.load("file:tiny-long")
    warm = 0
    for p in prompts:  # the two that ran were saved; the two that queued were not
        reply = chat(n, p, model="file:tiny-long")
        warm += cached(reply) >= reply["usage"]["prompt_tokens"] - BLOCK_TOKENS
    assert warm == 2


def test_cache_off_and_on_the_memory_planner(neuron_factory):
    off = neuron_factory(parallel=1, cache=CacheConfig(enabled=False))
    off.load(HELLO)
    prompt = [{"role": "system", "content": story(2, 300)}, {"role": "user", "content": "hi"}]
    chat(off, prompt)
    chat(off, [{"role": "user", "content": story(3, 300)}])
    assert cached(chat(off, prompt)) < BLOCK_TOKENS  # only the template's shared header
    assert off.get("/health").json()["cache"]["ram"]["used_mb"] == 0
    on = neuron_factory(parallel=1)
    on.load(HELLO)
    chat(on, prompt)
    chat(on, [{"role": "user", "content": story(3, 300)}])
    reg = on.neuron.registry
    held = reg.sessions.ram_used
    assert held > 0
    models = sum(m.vram_mb for m in reg.models.values())
    assert reg.used_mb() == models + held // 2**20  # counted where models live (the host)


LIGHTHOUSE = (
    "You are Maren, the keeper of a lighthouse on a rocky island in the North Sea. Every "
    "evening you climb one hundred and twelve steps, trim the wick, polish the lens and "
    "write the weather in a leather logbook. Your brother Jonas brings bread, lamp oil and "
    "letters on Thursdays if the sea allows. Last winter a fishing boat named Albatross ran "
    "aground on the northern reef; you rowed out alone and saved three sailors. You speak "
    "plainly, you distrust the mainland's new electric beacon, and you keep a grey cat "
    "called Pepper who sleeps beside the stove. In spring the terns return to nest on the "
    "southern cliffs, and you count their eggs for the museum in Aberdeen. Your mother, "
    "who kept the light before you, taught you to read the colour of the clouds at dusk: "
    "copper means wind, violet means rain, and a green flash at sunset means nothing at "
    "all except that you were lucky to see it. You have never been to a city larger than "
    "Bergen, and you do not intend to go.")


@pytest.mark.smollm2
@pytest.mark.parametrize("tier", ["ram", "disk"])
def test_a_restored_prompt_continues_as_the_cold_one(smollm2_file: Path, tmp_path, tier):
    # SmolLM2 on the engine, one partition per role: conversation A on slot 0, then B takes
    # slot 0 (A is saved as blocks), then A again on slot 1 is restored from the cache and
    # must continue token for token as A computed from nothing, cut at the same place.
    # "disk": blocks (1.5 MB each) overflow a 1 MB RAM budget, so they come back from disk.
    cache = SessionCache(CacheConfig(ram_mb={"ram": 256, "disk": 1}[tier], disk_mb=256),
                         tmp_path)
    model = LlamaCppEngine().load(smollm2_file, n_ctx=1024, n_threads=1, n_gpu_layers=0,
                                  devices=[], has_gpu=False, n_slots=3)
    try:
        model.attach_cache(cache.view("smollm2", model.cache_identity()))
        a = model.tokenize(LIGHTHOUSE, add_bos=True)
        b = model.tokenize("Write about a garden in spring, with roses. " * 8, add_bos=True)
        greedy(model, 0, a, partition="alice")
        greedy(model, 0, b, n=2, partition="bob")  # A's blocks leave the slot for the cache
        warm, restored = greedy(model, 1, a, partition="alice")
        assert restored == (len(a) - 1) // BLOCK_TOKENS * BLOCK_TOKENS > 0
        if tier == "disk":
            assert cache.snapshot()["disk_reads"] > 0
        model._cache[2].clear()
        greedy(model, 2, a[:restored], n=1, partition="cold")  # (no blocks: not displaced)
        cold, at = greedy(model, 2, a, partition="cold")
        assert at == restored and warm == cold
    finally:
        model.close()


@pytest.mark.smollm2
def test_a_damaged_disk_block_is_a_miss_and_the_answer_holds(smollm2_file: Path,
                                                               models_factory, neuron_factory,
                                                               tmp_path, caplog):
    # Every block on disk (a 1 MB RAM budget holds none of SmolLM2's 1.5 MB blocks), every
    # file then truncated: the next turn finds nothing usable, says so in the log and in
    # /health, prefills again, and answers as it did cold.
    n = neuron_factory(models_dir=str(models_factory(smollm2=True)), parallel=1, n_ctx=1024,
                       n_threads=1, cache=CacheConfig(ram_mb=1, disk_mb=256,
                                                      disk_dir=str(tmp_path / "kv")))
    n.load("file:smollm2")
    a = [{"role": "system", "content": LIGHTHOUSE},
         {"role": "user", "content": "What do you see tonight?"}]
    b = [{"role": "user", "content": "Write about a garden in spring, with roses. " * 8}]
    cold = chat(n, a, model="file:smollm2", max_tokens=12, account="alice")
    chat(n, b, model="file:smollm2", max_tokens=2, account="bob")
    files = sorted((tmp_path / "kv").glob("*/*.kv"))
    assert len(files) >= 2
    for f in files:
        f.write_bytes(f.read_bytes()[:1000])
    again = chat(n, a, model="file:smollm2", max_tokens=12, account="alice")
    assert cached(again) == 0
    assert again["choices"][0]["message"] == cold["choices"][0]["message"]
    assert n.get("/health").json()["cache"]["corrupt"] == 1  # the chain stops at the first
    assert "a miss, the file is removed" in caplog.text


def test_anthropic_cache_control_keeps_a_prompt_longer(neuron_factory, gateway_factory):
    import anthropic

    n = neuron_factory(parallel=1)
    n.load(HELLO)
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")])
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    system = [{"type": "text", "text": story(4, 300),
               "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    client.messages.create(model="tiny-hello", system=system, max_tokens=3,
                           messages=[{"role": "user", "content": "hi"}])
    chat(n, [{"role": "user", "content": story(5, 300)}])  # takes the slot: A is saved
    sessions = n.neuron.registry.sessions
    pinned = [b.keep_until for b in sessions._ram.values() if b.keep_until]
    assert pinned and min(pinned) > time.time() + 3000


def test_cache_control_ttls_reach_the_neuron_and_bad_ones_are_refused(neuron_factory):
    from cortex.gateway.anthropic.translate import to_openai

    def ttl(**body) -> object:
        base = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
        return to_openai(base | body).get("helexa_cache_ttl")

    block = {"type": "text", "text": "x"}
    assert ttl() is None
    assert ttl(system=[dict(block, cache_control={"type": "ephemeral"})]) == 300
    assert ttl(system=[dict(block, cache_control={"type": "ephemeral", "ttl": "5m"})],
               tools=[{"name": "t", "input_schema": {"type": "object"},
                       "cache_control": {"type": "ephemeral", "ttl": "1h"}}]) == 3600
    assert ttl(messages=[{"role": "user", "content": [
        dict(block, cache_control={"type": "ephemeral", "ttl": "1h"})]}]) == 3600
    n = neuron_factory(parallel=1)
    n.load(HELLO)
    for bad in (-1, "1h", 86401):
        r = n.post("/v1/chat/completions", {"model": HELLO, "helexa_cache_ttl": bad,
                                            "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 422 and r.json()["error"]["param"] == "helexa_cache_ttl", r.text
