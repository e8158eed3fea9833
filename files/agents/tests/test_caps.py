"""Caps that hold: every input counted, the output clamped to what a key has left, and the
holds of requests in flight kept in the shared store (every worker, every gateway host),
lapsing when the worker that took them is gone."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import anthropic
import pytest
import requests
from openai import OpenAI, RateLimitError

from cortex.gateway.auth import Auth
from cortex.gateway.budget import DEFAULT_OUTPUT, Limits, ask_for, clamp, count_input
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.config import (
    EntitlementsSection,
    KeyEntry,
    Limit,
    ModelEntry,
    ModelsConfig,
    Window,
)
from cortex.gateway.fleet import ModelOnNode, Node
from cortex.gateway.store import open_store
from cortex.testing.waiting import wait_for

T0 = 1_699_999_200.0
MSG = [{"role": "user", "content": "Hi"}]
ROLLING = Window(kind="rolling", seconds=600)


# -- the store: holds shared, atomic, lapsing --------------------------------------------
@pytest.fixture
def two_workers(store_spec: str, tmp_path: Path):
    """Two handles on one store, as two gateway workers (or hosts) have."""
    a, b = open_store(store_spec, tmp_path), open_store(store_spec, tmp_path)
    yield a, b
    a.close()
    b.close()


def test_a_reservation_counts_every_workers_holds(two_workers) -> None:
    a, b = two_workers
    g = a.reserve("k", "h1", cap=100, window_s=600, want=70, least=1, ttl_s=60, now=T0)
    assert (g.ok, g.tokens, g.spent, g.held) == (True, 70, 0, 0)
    # The other worker sees that hold: it is granted what is left, no more.
    g = b.reserve("k", "h2", cap=100, window_s=600, want=70, least=1, ttl_s=60, now=T0)
    assert (g.ok, g.tokens, g.held) == (True, 30, 70)
    g = b.reserve("k", "h3", cap=100, window_s=600, want=5, least=1, ttl_s=60, now=T0)
    assert not g.ok and g.tokens == 0 and b.holding("k", now=T0) == 100
    # Settled: the spend is stored and the hold gone, in one step.
    a.adjust("k", "h1", 12)  # the request's real spend is known
    assert b.holding("k", now=T0) == 42
    a.settle("k", "h1", 12, now=T0)
    assert b.usage("k", 600, now=T0 + 1)[:2] == (12, 30)
    a.adjust("k", "h1", 50)  # a late update never brings a settled hold back
    assert b.holding("k", now=T0 + 1) == 30
    # A balance (window 0) counts the total.
    g = a.reserve("k", "h4", cap=50, window_s=0, want=10, least=9, ttl_s=60, now=T0 + 1)
    assert not g.ok and (g.spent, g.held) == (12, 30)  # 8 left, 9 needed


def test_holds_lapse_unless_renewed(two_workers) -> None:
    a, b = two_workers
    a.reserve("k", "dead", cap=100, window_s=0, want=60, least=1, ttl_s=60, now=T0)
    a.reserve("k", "live", cap=100, window_s=0, want=30, least=1, ttl_s=60, now=T0)
    a.renew("k", ["live"], 60, now=T0 + 40)  # its worker is alive; the other's crashed
    g = b.reserve("k", "new", cap=100, window_s=0, want=100, least=1, ttl_s=60, now=T0 + 61)
    assert (g.ok, g.held, g.tokens) == (True, 30, 70)
    assert b.holding("k", now=T0 + 101) == 70  # "live" was not renewed after T0 + 40
    assert b.holding("k", now=T0 + 122) == 0


def _reserve_all(spec: str, state_dir: str, barrier, out) -> None:
    store = open_store(spec, Path(state_dir))
    barrier.wait(timeout=30)
    got = 0
    for i in range(50):
        g = store.reserve("k_race", f"{multiprocessing.current_process().pid}-{i}", cap=700,
                          window_s=600, want=7, least=1, ttl_s=600, now=T0)
        got += g.tokens
    out.put(got)
    store.close()


def test_processes_reserving_at_once_never_oversell(store_spec: str, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_reserve_all, args=(store_spec, str(tmp_path), barrier, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    granted = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sum(granted) == 700  # 4 x 50 x 7 asked; exactly the cap granted


def test_a_workers_holds_are_renewed_while_they_run(tmp_path: Path) -> None:
    auth = Auth(EntitlementsSection(keys=[KeyEntry(key="sk-c", account_id="a", key_id="c",
                                                   hard_cap=1000)]), [], tmp_path)
    auth.hold_ttl_s = 0.3
    p = auth.principal("sk-c")
    hold = auth.admit(p, lambda: 400)
    started = time.time()
    # Well past its TTL the hold is still there: the worker renews it.
    wait_for(lambda: time.time() - started > 1.2, "four TTLs to pass", 5, 0.05)
    assert auth.held("c") == 400
    hold.settle(100)
    assert auth.held("c") == 0 and auth.store.total("c") == 100


# -- what a request asks: every input counted -------------------------------------------
@pytest.mark.parametrize(("body", "least"), [
    ({"messages": MSG}, 5),
    # Anthropic's system prompt, a tool result, tools: all in the prompt.
    ({"system": "x" * 4000, "messages": MSG}, 1000),
    ({"messages": [*MSG, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "y" * 4000}]}]}, 1000),
    ({"messages": MSG, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {
            "p": {"type": "string", "description": "z" * 4000}}}}}]}, 1000),
    # Responses' instructions and input items.
    ({"instructions": "i" * 4000, "input": [{"role": "user", "content": "Hi"}]}, 1000),
    # Token arrays (completions, embeddings): one token an entry.
    ({"prompt": list(range(3000))}, 3000),
    ({"input": [[1] * 1000, [2] * 2000]}, 3000),
])
def test_every_input_is_counted(body: dict, least: int) -> None:
    assert least <= count_input({"model": "m", **body}) <= least * 1.1 + 10


def test_embeddings_as_token_arrays_reserve_their_tokens() -> None:
    ask = ask_for({"model": "e", "input": [5] * 2048}, ())
    assert not ask.generates and ask.want == ask.least >= 2048


@pytest.mark.parametrize(("limit", "reported", "want", "binding"), [
    (Limit(output=64), 0, 64, True),  # models.toml's output limit
    (Limit(context=1024), 4096, 1024, False),  # its context, less the prompt
    (None, 4096, 4096, False),  # a replica's n_ctx, less the prompt
    (None, 0, DEFAULT_OUTPUT, True),  # nothing known yet: the default, written
])
def test_a_request_naming_no_max_tokens_reserves_the_models_limit(limit, reported, want,
                                                                   binding) -> None:
    cat = Catalogue(ModelsConfig(models=[ModelEntry(id="m", limit=limit)]))

    class FleetView:
        nodes = {"n1": Node("n1", "http://n1", models={"file:m": ModelOnNode(
            "file:m", "loaded", info={"limit": {"context": reported}} if reported else {})})}

    ask = Limits(cat, FleetView()).fill(cat.lookup("m"), ask_for({"model": "m", "messages": MSG},
                                                     ("max_tokens",)))
    # A model's own limit is its output; a context is less the prompt (the neuron stops
    # there by itself, so that bound need not be written).
    assert ask.ceiling == (want if binding else want - ask.input)
    assert ask.binding is binding


@pytest.mark.parametrize(("body", "allowed", "sent"), [
    ({"max_tokens": 500}, 40, {"max_tokens": 40}),
    ({"max_tokens": 20}, 40, {"max_tokens": 20}),
    ({"max_completion_tokens": 500, "max_tokens": 30}, 40,
     {"max_completion_tokens": 40, "max_tokens": 30}),
    ({}, 40, {"max_tokens": 40}),  # none named: the bound is written
    ({"max_tokens": "many"}, 40, {"max_tokens": "many"}),  # refused later for it (400)
])
def test_the_clamp_goes_into_the_body(body: dict, allowed: int, sent: dict) -> None:
    body = {"model": "m", "messages": MSG, **body}
    ask = ask_for(body, ("max_tokens", "max_completion_tokens"))
    clamp(body, ask, allowed)
    assert {k: v for k, v in body.items() if k.startswith("max_")} == sent


# -- end to end: what a capped key's client sees ----------------------------------------
@pytest.fixture
def loop_neuron(neuron_factory):
    n = neuron_factory()
    n.load("file:tiny-loop")  # "la di da" until max_tokens or the context ends it
    return n


def capped(store: str, cap: int, window: Window = ROLLING) -> EntitlementsSection:
    return EntitlementsSection(require_auth=True, store=store, keys=[
        KeyEntry(key="sk-capped", account_id="acme", key_id="capped", hard_cap=cap,
                 window=window)])


def spent(gw) -> int:
    wait_for(lambda: gw.gw.auth.held("capped") == 0, "the holds to settle")
    return gw.gw.auth.store.window_total("capped", 600)


def _openai(url: str) -> tuple[str, int]:
    r = OpenAI(base_url=url + "/v1", api_key="sk-capped", max_retries=0).chat.completions \
        .create(model="tiny-loop", messages=MSG, max_tokens=1000)
    return r.choices[0].finish_reason, r.usage.completion_tokens


def _anthropic(url: str) -> tuple[str, int]:
    m = anthropic.Anthropic(base_url=url, api_key="sk-capped", max_retries=0).messages \
        .create(model="tiny-loop", max_tokens=1000, messages=MSG)
    return m.stop_reason, m.usage.output_tokens


def _responses(url: str) -> tuple[str, int]:
    r = OpenAI(base_url=url + "/v1", api_key="sk-capped", max_retries=0).responses.create(
        model="tiny-loop", input="Hi", max_output_tokens=1000)
    return r.status, r.usage.output_tokens


@pytest.mark.parametrize(("send", "cut"), [(_openai, "length"), (_anthropic, "max_tokens"),
                                           (_responses, "incomplete")])
def test_max_tokens_is_clamped_to_what_the_key_has_left(loop_neuron, gateway_factory,
                                                        tmp_path, send, cut) -> None:
    # Before: a key near its cap got an answer of any size (1000 tokens here). Now each
    # dialect's bound is clamped, in the body the neuron gets, to what the key has left.
    gw = gateway_factory({"n1": loop_neuron}, [ModelEntry(id="tiny-loop")],
                         entitlements=capped(f"sqlite://{tmp_path}/s.db", 100))
    why, generated = send(gw.url)
    assert why == cut and generated < 100
    assert 100 - 30 < spent(gw) <= 100 + 30  # the cap, within the prompt's estimate
    with pytest.raises((RateLimitError, anthropic.RateLimitError)):
        send(gw.url)


def test_a_request_naming_no_bound_stops_at_what_the_key_has_left(loop_neuron,
                                                                  gateway_factory,
                                                                  tmp_path) -> None:
    # Before: 256 tokens held, and the neuron ran to the end of its 512-token context.
    gw = gateway_factory({"n1": loop_neuron}, [ModelEntry(id="tiny-loop")],
                         entitlements=capped(f"sqlite://{tmp_path}/s.db", 120))
    r = gw.post("/v1/chat/completions", {"model": "tiny-loop", "messages": MSG, "stream": True,
                                         "stream_options": {"include_usage": True}},
                headers={"Authorization": "Bearer sk-capped"})
    assert r.status_code == 200
    assert 0 < spent(gw) <= 120 + 30


def test_a_long_prompt_is_refused_when_the_key_cannot_pay_for_it(loop_neuron,
                                                                 gateway_factory,
                                                                 tmp_path) -> None:
    gw = gateway_factory({"n1": loop_neuron}, [ModelEntry(id="tiny-loop")],
                         entitlements=capped(f"sqlite://{tmp_path}/s.db", 200))
    ant = anthropic.Anthropic(base_url=gw.url, api_key="sk-capped", max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as exc:  # the system prompt alone: ~1000
        ant.messages.create(model="tiny-loop", max_tokens=5, system="be brief " * 450,
                            messages=MSG)
    assert "needs about" in exc.value.message
    assert gw.gw.auth.store.total("capped") == 0


def test_holds_are_seen_by_every_gateway(loop_neuron, gateway_factory, store_spec,
                                         models_dir) -> None:
    # Two gateways (two workers, or two hosts) on one store: a stream in flight on one
    # holds its tokens on the other. Before, each worker counted only its own holds.
    ents = capped(store_spec, 400)
    gw1 = gateway_factory({"n1": loop_neuron}, [ModelEntry(id="tiny-loop")], entitlements=ents)
    gw2 = gateway_factory({"n1": loop_neuron}, [ModelEntry(id="tiny-loop")], entitlements=ents)
    h = {"Authorization": "Bearer sk-capped"}
    with requests.post(gw1.url + "/v1/chat/completions", headers=h, stream=True, timeout=30,
                       json={"model": "tiny-loop", "messages": MSG, "stream": True,
                             "max_tokens": 300}) as held:
        assert held.status_code == 200
        assert gw2.gw.auth.held("capped") >= 300
        r = gw2.post("/v1/chat/completions", {"model": "tiny-loop", "messages": MSG,
                                              "max_tokens": 300}, headers=h)
        # What the stream holds leaves well under 100 for this one, and it is told so.
        assert r.status_code in (200, 429), r.text
        if r.status_code == 200:
            assert r.json()["usage"]["completion_tokens"] < 100
        for _ in held.iter_lines():
            pass
    assert spent(gw1) <= 400 + 2 * 30
