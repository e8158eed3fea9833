"""The gateway over real neurons on loopback: routing, cold loads, eviction, failures."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from openai import APIError, OpenAI

from cortex.gateway.config import EvictionSection, ModelEntry, RoutingSection
from cortex.testing.served import Served
from cortex.testing.tiny_gguf import SCRIPT_HELLO, script_text
from cortex.testing.waiting import wait_for

HELLO = script_text(SCRIPT_HELLO)
MSG = [{"role": "user", "content": "Hi"}]


def loads_on(neuron) -> int:
    samples = neuron.neuron.metrics.load_seconds.collect()[0].samples
    return int(sum(s.value for s in samples if s.name.endswith("_count")))


@pytest.fixture
def two(neuron_factory):
    # The same fixed memory on both (not this machine's MemAvailable, which moves between
    # polls), so placement ties really tie and go by node name.
    return {"n1": neuron_factory(cpu_memory_mb=4096), "n2": neuron_factory(cpu_memory_mb=4096)}


def test_cold_load_then_answer_with_the_openai_client(two, gateway_factory):
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")], aliases={"hello": "tiny-hello"})
    client = OpenAI(base_url=gw.url + "/v1", api_key="anything")
    r = client.chat.completions.create(model="hello", messages=MSG, temperature=0)
    assert r.choices[0].message.content == HELLO
    assert loads_on(two["n1"]) + loads_on(two["n2"]) == 1
    # Ties go by node name: n1 got it, and the gateway saw it loaded at once.
    assert two["n1"].neuron.registry.models.keys() == {"file:tiny-hello"}
    models = {m["id"]: m for m in gw.get("/v1/models").json()["data"]}
    assert models["tiny-hello"]["loaded"] is True
    loc = models["tiny-hello"]["locations"][0]
    assert (loc["node"], loc["status"]) == ("n1", "loaded")
    assert models["hello"]["alias_of"] == "tiny-hello"
    assert set(models["tiny-hello"]["feasible_on"]) == {"n1", "n2"}


def test_streaming_through_the_gateway(two, gateway_factory):
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")])
    client = OpenAI(base_url=gw.url + "/v1", api_key="x")
    chunks = list(client.chat.completions.create(model="tiny-hello", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HELLO
    assert chunks[-1].usage.completion_tokens == len(SCRIPT_HELLO) - 1
    r = gw.post("/v1/chat/completions", {"model": "tiny-hello", "messages": MSG,
                                         "stream": True}, stream=True)
    assert r.headers["X-Accel-Buffering"] == "no" and r.headers["X-Cortex-Node"] == "n1"
    r.close()


def test_pinned_model_loads_on_its_node(two, gateway_factory):
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello", pinned_on=["n2"])])
    assert gw.chat("tiny-hello").status_code == 200
    assert "file:tiny-hello" in two["n2"].neuron.registry.models
    assert not two["n1"].neuron.registry.models
    entry = gw.get("/v1/models").json()["data"][0]
    assert entry["feasible_on"] == ["n2"]


def test_least_busy_replica_wins(two, gateway_factory):
    for n in two.values():
        n.load("file:tiny-hello")
    # (least_busy: under affinity one conversation stays on its replica unless that one is
    # much busier, test_fleet_routing.py)
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")],
                         routing=RoutingSection(policy="least_busy"))
    wait_for(lambda: len(gw.gw.fleet.replicas("file:tiny-hello")) == 2, "two replicas", 20)
    gw.gw.fleet.nodes["n1"].models["file:tiny-hello"].in_flight = 3  # as a poll would say
    r = gw.chat("tiny-hello")
    assert r.headers["X-Cortex-Node"] == "n2"


def test_twenty_concurrent_requests_cause_one_load(neuron_factory, gateway_factory):
    from cortex.neuron.config import AdmissionConfig

    two = {n: neuron_factory(admission=AdmissionConfig(max_queue_depth=32)) for n in ("n1", "n2")}
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")])
    results = []

    def go():
        results.append(gw.chat("tiny-hello", temperature=0).status_code)

    threads = [threading.Thread(target=go) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 20
    assert loads_on(two["n1"]) + loads_on(two["n2"]) == 1


@pytest.mark.parametrize("strategy", ["lru", "priority"])
def test_eviction_order(neuron_factory, gateway_factory, strategy):
    # Room for two tiny models (each is ~70 MB with its reserved context).
    n = neuron_factory(cpu_memory_mb=150)
    models = [ModelEntry(id="tiny-hello", vram_mb=70, residency_priority=50),
              ModelEntry(id="tiny-think", vram_mb=70, residency_priority=200),
              ModelEntry(id="tiny-tool", vram_mb=70, residency_priority=100)]
    gw = gateway_factory({"n1": n}, models, strategy=strategy)
    assert gw.chat("tiny-think").status_code == 200  # used first: least recently used
    assert gw.chat("tiny-hello").status_code == 200
    assert gw.chat("tiny-tool").status_code == 200
    loaded = set(n.neuron.registry.models)
    if strategy == "lru":
        assert loaded == {"file:tiny-hello", "file:tiny-tool"}  # think was the LRU
    else:
        # tiny-think has a higher priority than tiny-tool: only tiny-hello may give way.
        assert loaded == {"file:tiny-think", "file:tiny-tool"}
    metrics = gw.gw.metrics.evictions.collect()[0].samples
    assert sum(s.value for s in metrics if s.name.endswith("_total")) == 1


def test_pinned_models_are_never_evicted(neuron_factory, gateway_factory):
    n = neuron_factory(cpu_memory_mb=150)
    models = [ModelEntry(id="tiny-hello", vram_mb=70, pinned_on=["n1"]),
              ModelEntry(id="tiny-think", vram_mb=70),
              ModelEntry(id="tiny-tool", vram_mb=70)]
    gw = gateway_factory({"n1": n}, models)
    for m in ("tiny-hello", "tiny-think", "tiny-tool"):
        assert gw.chat(m).status_code == 200
    assert set(n.neuron.registry.models) == {"file:tiny-hello", "file:tiny-tool"}


def test_idle_ttl_unloads(two, gateway_factory):
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello", keep_alive="0.5s"),
                               ModelEntry(id="tiny-think")])
    assert gw.chat("tiny-hello").status_code == 200
    assert gw.chat("tiny-think").status_code == 200
    def loaded(model):
        return [k for k, n in two.items() if f"file:{model}" in n.neuron.registry.models]

    def reasons():
        samples = gw.gw.metrics.evictions.collect()[0].samples
        return [s.labels["reason"] for s in samples if s.name.endswith("_total")]

    wait_for(lambda: reasons() == ["idle"], "an idle unload", 15)
    assert not loaded("tiny-hello")
    assert len(loaded("tiny-think")) == 1  # no keep_alive: it stays


def test_unknown_model_is_404(two, gateway_factory):
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")])
    r = gw.chat("nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = gw.post("/v1/chat/completions", {"messages": MSG})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_model_field"


@pytest.mark.parametrize("data, headers, status, code", [
    (b'{"model": "tiny-hello", "messages": [', {"Content-Type": "application/json"}, 400,
     "malformed_json"),
    (b'["not", "an", "object"]', {"Content-Type": "application/json"}, 422,
     "invalid_request_body"),
    (b'model=tiny-hello', {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type"),
    # A browser's no-cors POST: no Content-Type at all, or text/plain.
    (b'{"model": "tiny-hello", "messages": []}', {}, 415, "unsupported_media_type"),
    (b'{"model": "tiny-hello", "messages": []}', {"Content-Type": "text/plain"}, 415,
     "unsupported_media_type"),
    (b'{"messages": []}', {"Content-Type": "application/json"}, 400, "missing_model_field"),
    (b'{"model": "tiny-hello", "pad": "' + b"x" * 5000 + b'"}',
     {"Content-Type": "application/json"}, 413, "request_too_large"),
])
def test_bad_bodies_get_a_clear_error(two, gateway_factory, data, headers, status, code):
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")], max_body_bytes=4096)
    r = gw.http.post(gw.url + "/v1/chat/completions", data=data, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["error"]["code"] == code
    assert not loads_on(two["n1"]) + loads_on(two["n2"])  # nothing reached a neuron


def test_chunked_upload_and_wrong_method(two, gateway_factory):
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")])
    body = json.dumps({"model": "tiny-hello", "messages": MSG}).encode()
    r = gw.http.post(gw.url + "/v1/chat/completions", data=iter([body[:10], body[10:]]),
                     headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == HELLO
    r = gw.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_context_limit_from_the_catalogue(two, gateway_factory):
    from cortex.gateway.config import Limit

    gw = gateway_factory(two, [ModelEntry(id="tiny-hello", limit=Limit(context=10))])
    r = gw.chat("tiny-hello", "x" * 400)
    e = r.json()["error"]
    assert r.status_code == 400 and e["code"] == "context_length_exceeded"
    assert e["max"] == 10 and e["estimated_prompt_tokens"] == 100


def test_neuron_killed_becomes_unhealthy_and_requests_move(two, gateway_factory):
    for n in two.values():
        n.load("file:tiny-hello")
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")])
    wait_for(lambda: len(gw.gw.fleet.replicas("file:tiny-hello")) == 2, "two replicas", 20)
    two["n1"].server.shutdown()
    two["n1"].server.server_close()
    # Before three polls have failed, a request still finds a way (retry on n2).
    r = gw.chat("tiny-hello")
    assert r.status_code == 200 and r.headers["X-Cortex-Node"] == "n2"
    wait_for(lambda: not gw.gw.fleet.nodes["n1"].healthy, "n1 unhealthy", 20)
    assert gw.gw.fleet.nodes["n1"].failures >= 3
    h = gw.get("/health").json()
    assert h["status"] == "degraded" and h["nodes"] == {"healthy": 1, "total": 2,
                                                        "drained": 0}
    assert gw.chat("tiny-hello").headers["X-Cortex-Node"] == "n2"


def test_neuron_dying_mid_stream_gives_an_error_event(neuron_process, gateway_factory):
    n = neuron_process('n_ctx = 65536\ndefault_models = ["file:tiny-long"]')
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-long")])
    client = OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="tiny-long", messages=MSG, stream=True,
                                            max_tokens=60000)
    got = 0
    with pytest.raises(APIError) as exc:
        for _ in stream:
            got += 1
            if got == 3:
                n.crash()  # the neuron dies mid-stream
    assert got >= 3
    assert "stream broke off" in str(exc.value)


def test_drain_and_undrain(two, gateway_factory):
    for n in two.values():
        n.load("file:tiny-hello")
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")], admin_keys=["adm"])
    wait_for(lambda: len(gw.gw.fleet.replicas("file:tiny-hello")) == 2, "two replicas", 20)
    assert gw.post("/admin/nodes/n1/drain").status_code == 401
    h = {"Authorization": "Bearer adm"}
    r = gw.post("/admin/nodes/n1/drain", headers=h)
    assert r.json() == {"node": "n1", "drained": True, "in_flight": 0}
    for _ in range(5):
        assert gw.chat("tiny-hello").headers["X-Cortex-Node"] == "n2"
    assert two["n1"].get("/health").json()["drained"] is True  # kept on the neuron
    assert gw.get("/health").json()["nodes"]["drained"] == 1
    gw.post("/admin/nodes/n1/undrain", headers=h)
    assert not gw.gw.fleet.nodes["n1"].drained
    assert gw.post("/admin/nodes/zz/drain", headers=h).status_code == 404


def test_admin_load_and_unload(two, gateway_factory):
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")], admin_keys=["adm"])
    h = {"Authorization": "Bearer adm"}
    r = gw.post("/admin/nodes/n2/models/load", {"model": "tiny-hello"}, headers=h)
    assert r.status_code == 200 and "file:tiny-hello" in two["n2"].neuron.registry.models
    r = gw.post("/admin/nodes/n2/models/load", {"model": "file:absent"}, headers=h)
    assert r.status_code == 422 and r.json()["error"]["code"] == "source_not_found"
    r = gw.post("/admin/nodes/n2/models/unload", {"model": "tiny-hello"}, headers=h)
    assert r.status_code == 200 and not two["n2"].neuron.registry.models


def test_metrics(two, gateway_factory):
    from cortex.gateway.app import metrics_app
    from cortex.gateway.metrics import FleetCollector

    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")])
    gw.chat("tiny-hello")
    gw.get("/health")  # same connection: served once the chat's accounting (after send) ran
    reg = gw.gw.metrics.registry
    # As the metrics server does: the gauges are the fleet's last poll (one after the chat).
    gw.gw.fleet.poll_all()
    reg.register(FleetCollector(gw.gw.fleet, gw.gw.catalogue))
    text = metrics_app(reg).test_client().get("/metrics").get_data(as_text=True)
    assert 'cortex_requests_total{model="tiny-hello",node="n1"} 1.0' in text
    assert 'cortex_cold_starts_total{model="tiny-hello",node="n1"} 1.0' in text
    assert "cortex_completion_tokens_total" in text
    assert 'cortex_model_in_flight{model="tiny-hello",node="n1"} 0.0' in text
    assert 'cortex_node_up{node="n2"} 1.0' in text
    assert "cortex_device_vram_free_mb" in text
    assert "cortex_time_to_first_token_seconds_bucket" in text
    assert 'cortex_gateway_overhead_seconds_count{endpoint="/v1/chat/completions"} 1.0' in text


def test_overhead_header_on_non_streaming(two, gateway_factory):
    import time as _time

    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")])
    gw.chat("tiny-hello")  # the cold load is not overhead; measure a warm request
    t0 = _time.monotonic()
    r = gw.chat("tiny-hello")
    wall_ms = (_time.monotonic() - t0) * 1000
    overhead = float(r.headers["X-Cortex-Overhead-Ms"])
    timing = r.json()["helexa_timing"]
    upstream_ms = timing["prefill_ms"] + timing["decode_ms"] + timing["queue_ms"]
    # The header is the gateway's own time: the wall time less the wait on the neuron.
    assert 0 < overhead < wall_ms - upstream_ms
    gw.get("/health")  # same connection: served once the chat's accounting (after send) ran
    gw.gw.metrics.flush()
    samples = gw.gw.metrics.overhead.collect()[0].samples
    assert [s.value for s in samples if s.name.endswith("_count")] == [2.0]


def test_a_stale_view_of_a_drained_node_is_retried_elsewhere(two, gateway_factory):
    """Another gateway worker may not have polled the drain yet: the neuron refuses routed
    requests while drained, and the gateway retries on a replica (no error reaches the
    client); a direct caller of the drained neuron is still served."""
    for n in two.values():
        n.load("file:tiny-hello")
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello")], poll_interval_secs=60)
    wait_for(lambda: len(gw.gw.fleet.replicas("file:tiny-hello")) == 2, "two replicas", 20)
    two["n1"].post("/drain", {"drained": True})  # behind the gateway's back
    for _ in range(3):
        r = gw.chat("tiny-hello")
        assert r.status_code == 200 and r.headers["X-Cortex-Node"] == "n2"
    assert two["n1"].chat("tiny-hello").status_code == 200
    two["n1"].neuron.registry.shutting_down = True
    two["n1"].post("/drain", {"drained": False})
    gw.gw.fleet.refresh(gw.gw.fleet.nodes["n1"])
    assert gw.chat("tiny-hello").headers["X-Cortex-Node"] == "n2"  # shutting down: retried
    two["n1"].neuron.registry.shutting_down = False


def _stale_idle_view(gw, node: str, model_id: str) -> None:
    """What a poll from before the last request shows: idle for an hour."""
    m = gw.gw.fleet.nodes[node].models[model_id]
    m.in_flight = m.queue_depth = 0
    m.last_used = time.time() - 3600


def test_reaper_never_unloads_a_model_in_use(neuron_factory, gateway_factory):
    # The reaper decided on the last poll: a stream that began after it was cut off.
    n = neuron_factory(n_ctx=65536)
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-long", keep_alive="60s")],
                         poll_interval_secs=3600)  # no poll (or reaper run) but ours
    body = {"model": "tiny-long", "messages": MSG, "max_tokens": 60000, "stream": True}
    with gw.http.post(gw.url + "/v1/chat/completions", json=body, stream=True,
                      timeout=60) as stream:
        assert stream.status_code == 200  # (at once, if the cold load outlasts a tick)
        models = n.neuron.registry.models
        wait_for(lambda: "file:tiny-long" in models, "the cold load", 20)
        scheduler = models["file:tiny-long"].scheduler
        wait_for(lambda: scheduler.in_flight == 1, "scheduler.in_flight == 1", 20)
        _stale_idle_view(gw, "n1", "file:tiny-long")
        assert gw.gw.router.reap_idle() == []
        assert "file:tiny-long" in n.neuron.registry.models
    n.post("/models/unload", {"model_id": "file:tiny-long"})


def test_reaper_spares_a_model_just_routed_to(two, gateway_factory):
    gw = gateway_factory(two, [ModelEntry(id="tiny-hello", keep_alive="60s")],
                         poll_interval_secs=3600)
    assert gw.chat("tiny-hello").status_code == 200
    (node,) = [k for k, n in two.items() if "file:tiny-hello" in n.neuron.registry.models]
    gw.gw.router.routed(gw.gw.fleet.nodes[node], "file:tiny-hello")  # one on its way there
    _stale_idle_view(gw, node, "file:tiny-hello")
    assert gw.gw.router.reap_idle() == []
    # The reply was read before either end finished counting it (both count it done as
    # the response closes): until they have, the model is busy and rightly stays.
    scheduler = two[node].neuron.registry.models["file:tiny-hello"].scheduler
    wait_for(lambda: scheduler.in_flight == 0, "the neuron to count the request done", 10)
    wait_for(lambda: not gw.gw.router.in_flight.of(node, "file:tiny-hello"),
             "the gateway to count the request done", 10)
    # Idle by the neuron's own account and not routed to: it goes.
    assert gw.gw.router.reap_idle(now=time.time() + 120) == [(node, "file:tiny-hello")]


class _Switch:
    """A neuron that can turn into something else answering 200 (a proxy page, garbage)."""

    def __init__(self, app) -> None:
        self.app, self.garbage = app, None

    def __call__(self, environ, start_response):
        if self.garbage is None or environ["PATH_INFO"] not in self.garbage:
            return self.app(environ, start_response)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [self.garbage[environ["PATH_INFO"]]]


@pytest.mark.parametrize("garbage", [
    {"/health": b"<html>hello</html>"},
    {"/health": b"[]"},
    {"/models": b'[{"name": "no id"}]'},
    {"/health": b'{"status": "ok", "models": [{"id": "file:tiny-hello", "in_flight": "x"}]}',
     "/models": b'[{"id": "file:tiny-hello"}]'},
    {"/health": b'{"status": "ok", "devices": 3}'},
])
def test_a_200_with_garbage_is_a_failed_poll(neuron, gateway_factory, garbage):
    switch = _Switch(neuron.app)
    server = Served(switch)
    try:
        gw = gateway_factory({"n1": server}, [ModelEntry(id="tiny-hello")],
                             poll_interval_secs=0.05)
        node = gw.gw.fleet.nodes["n1"]
        assert node.healthy
        switch.garbage = garbage
        wait_for(lambda: not node.healthy, "the node unhealthy", 20)
        assert node.last_error and gw.get("/health").json()["nodes"]["healthy"] == 0
        switch.garbage = None  # the poller lives on: the node comes back
        wait_for(lambda: node.healthy, "the node healthy", 20)
        assert gw.chat("tiny-hello").status_code == 200
    finally:
        server.close()


def test_ipv6_endpoints_work(neuron_factory, gateway_factory):
    import socket

    from cortex.gateway.config import NeuronEntry

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    n = neuron_factory()
    server = Served(n.app, host="::1")
    try:
        gw = gateway_factory({"v6": server}, [ModelEntry(id="tiny-hello")])
        assert gw.gw.fleet.nodes["v6"].healthy
        r = gw.chat("tiny-hello")
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == HELLO
        nodes = gw.get("/health").json()["nodes"]
        assert nodes["healthy"] == 1
        # Without brackets it cannot be parsed; the error says how to write it.
        with pytest.raises(ValueError, match=r"brackets: http://\[::1\]:13131"):
            NeuronEntry("v6", f"http://::1:{server.port}")
    finally:
        server.close()


def test_a_node_that_unloaded_n_models_gets_a_defrag_warning(neuron, gateway_factory, caplog):
    # [eviction] defrag_after_cycles = 2: a warning at the 2nd, 4th... unload on a node.
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello")], defrag_after_cycles=2)
    node = gw.gw.fleet.nodes["n1"]
    with caplog.at_level(logging.WARNING, logger="cortex.gateway.router"):
        for cycle in range(1, 5):
            neuron.load("file:tiny-hello")
            assert gw.gw.router.unload(node, "file:tiny-hello", reason="evicted")
            warned = [r.getMessage() for r in caplog.records
                      if "defrag_after_cycles" in r.getMessage()]
            assert len(warned) == cycle // 2, warned
    assert warned[-1].startswith("n1 has unloaded 4 models")


@pytest.mark.parametrize("cycles", [-1, 1.5, "2"])
def test_defrag_after_cycles_is_a_whole_number(cycles):
    with pytest.raises(ValueError, match="defrag_after_cycles"):
        EvictionSection(defrag_after_cycles=cycles)
