"""The simulated replica the bench's simulation mode stands neurons in with: its cache,
its admission and its slot choice behave as the neuron's do (cortex.testing.costmodel)."""

from __future__ import annotations

from cortex.testing.costmodel import CostModel, Full, SimReplica

FAST = dict(prefill_tok_s=1e6, decode_tok_s=1e5, speed=100.0)


def run(sim: SimReplica, prompt: str, max_tokens: int = 4) -> tuple[int, int]:
    job = sim.submit(prompt, max_tokens)
    assert sum(sim.tokens(job)) == max_tokens
    return job.prompt_tokens, job.cached_tokens


def test_a_sessions_next_turn_reuses_its_prompt_from_the_slot():
    sim = SimReplica(CostModel(slots=2, **FAST))
    try:
        turn1 = "system " * 200 + "first question"
        assert run(sim, turn1)[1] == 0
        prompt, cached = run(sim, turn1 + " answer, then the second question")
        assert cached == len(turn1) // 4 and prompt > cached
    finally:
        sim.stop()


def test_another_conversation_does_not_evict_a_slot_it_shares_only_a_header_with():
    sim = SimReplica(CostModel(slots=2, **FAST))
    try:
        a, b = "header " + "a" * 4000, "header " + "b" * 4000
        run(sim, a)
        run(sim, b)  # shares only "header ": the other slot, not a's
        assert run(sim, a + " more")[1] == len(a) // 4
        assert run(sim, b + " more")[1] == len(b) // 4
    finally:
        sim.stop()


def test_more_sessions_than_slots_evict_unless_the_ram_tier_keeps_them():
    prompts = [f"{i}: session " + "x" * 4000 for i in range(4)]
    for ram, expect_hits in ((0, False), (10_000, True)):
        sim = SimReplica(CostModel(slots=1, ram_cache_tokens=ram, restore_tok_s=1e6, **FAST))
        try:
            for p in prompts:
                run(sim, p)
            cached = [run(sim, p + " next")[1] for p in prompts]
            assert cached == ([len(p) // 4 for p in prompts] if expect_hits else [0] * 4)
        finally:
            sim.stop()


def test_a_full_queue_refuses():
    sim = SimReplica(CostModel(slots=1, max_queue_depth=1, prefill_tok_s=1, decode_tok_s=1))
    try:
        sim.submit("a" * 400, 4)
        sim.submit("b" * 400, 4)
        try:
            sim.submit("c" * 400, 4)
        except Full:
            pass
        else:
            raise AssertionError("a third request fit one slot and a queue of one")
    finally:
        sim.stop()


def test_decode_batching_as_fitted():
    cpu = CostModel(prefill_tok_s=260, decode_tok_s=99, slots=8, contention=0.44)
    # Measured here (shared/BENCH.md): 99 tok/s at 1 sequence, 138 at 2, 176 at 4, 189 at 8.
    measured = {1: 99, 2: 138, 4: 176, 8: 189}
    assert all(abs(cpu.decode_rate(b) / tok_s - 1) < 0.05 for b, tok_s in measured.items())


def test_a_stand_in_with_a_cost_model_serves_through_the_gateway(standin_factory,
                                                                 gateway_factory):
    from cortex.gateway.config import ModelEntry

    s = standin_factory(("file:sim",), cost=CostModel(slots=2, max_queue_depth=1, **FAST),
                        record=False)
    gw = gateway_factory({"n1": s}, [ModelEntry("sim")])
    history = [{"role": "system", "content": "rules " * 300},
               {"role": "user", "content": "first task"}]
    r = gw.post("/v1/chat/completions", {"model": "sim", "messages": history,
                                         "max_tokens": 5})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["usage"]["completion_tokens"] == 5
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    history += [first["choices"][0]["message"], {"role": "user", "content": "next"}]
    with gw.http.post(gw.url + "/v1/chat/completions", stream=True, timeout=30, json={
            "model": "sim", "messages": history, "max_tokens": 20, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        events = [line for line in r.iter_lines() if line.startswith(b"data: {")]
    usage = __import__("json").loads(events[-1][6:])["usage"]
    assert usage["completion_tokens"] == 20
    assert usage["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 1
    health = s.served.get("/health").json()["models"][0]
    assert health["slots"] == {"busy": 0, "total": 2} and health["max_queue_depth"] == 1
