"""Every error path: the status, the code, Retry-After, and no stuck slot afterwards."""

from __future__ import annotations

import threading

import pytest

from cortex.core.errors import ApiError
from cortex.neuron.config import AdmissionConfig
from cortex.testing.tiny_gguf import SCRIPT_HELLO, script_text
from cortex.testing.waiting import wait_for

HELLO = script_text(SCRIPT_HELLO)
MSG = [{"role": "user", "content": "Hi"}]


def err(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert e["code"] == code, e
    assert e["message"]
    return e


@pytest.fixture
def hello(neuron):
    neuron.load("file:tiny-hello")
    return neuron


@pytest.mark.parametrize("model_id", ["file:../etc/passwd", "file:/etc/passwd",
                                      "https://evil.example/x.gguf", "hf:../../x",
                                      "file:a/../../b", "ftp:thing", "", 42])
def test_model_ids_that_leave_models_dir_are_refused(neuron, model_id):
    r = neuron.post("/models/load", {"model_id": model_id})
    e = err(r, 400, "invalid_model_id")
    assert e["param"] == "model_id"


def test_load_errors(neuron):
    err(neuron.post("/models/load", {}), 400, "missing_model_id")
    e = neuron.post("/models/load", {"model_id": "file:absent"}).json()["error"]
    assert e["kind"] == "source_not_found" and "absent" in e["detail"]
    r = neuron.post("/models/load", {"model_id": "file:tiny-hello", "tensor_parallel": 2})
    assert r.status_code == 422 and r.json()["error"]["kind"] == "tp_requires_safetensors"
    r = neuron.post("/models/load", {"model_id": "file:tiny-hello", "harness": "nope"})
    assert r.status_code == 422 and r.json()["error"]["kind"] == "unknown_harness"
    r = neuron.post("/models/load", {"model_id": "file:tiny-hello", "devices": [3]})
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    err(neuron.post("/models/load", {"model_id": "file:tiny-hello", "devices": "0"}), 422,
        "invalid_request_body")


def test_corrupt_gguf_is_a_clear_422(neuron, models_dir):
    (models_dir / "broken.gguf").write_bytes(b"not a gguf at all")
    try:
        r = neuron.post("/models/load", {"model_id": "file:broken"})
        assert r.status_code == 422 and r.json()["error"]["kind"] == "invalid_gguf"
    finally:
        (models_dir / "broken.gguf").unlink()


def test_insufficient_memory_is_503_before_allocation(neuron_factory):
    n = neuron_factory(cpu_memory_mb=1)
    r = n.post("/models/load", {"model_id": "file:tiny-hello"})
    e = err(r, 503, "insufficient_vram")
    assert r.headers["Retry-After"] == "5" and e["need_mb"] > e["free_mb"]
    assert n.get("/models").json()[0]["status"] == "available"


def test_body_errors(hello):
    url = hello.url + "/v1/chat/completions"
    err(hello.http.post(url, data="{nope", headers={"Content-Type": "application/json"}), 400,
        "malformed_json")
    err(hello.http.post(url, data="x=1", headers={"Content-Type": "text/plain"}), 415,
        "unsupported_media_type")
    err(hello.post("/v1/chat/completions", ["a list"]), 422, "invalid_request_body")
    err(hello.post("/v1/chat/completions", {"messages": MSG}), 400, "missing_model_field")
    err(hello.post("/v1/chat/completions", {"model": "tiny-hello"}), 400, "missing_messages")
    e = err(hello.post("/v1/chat/completions", {"model": "tiny-hello", "messages": []}), 422,
            "invalid_request_body")
    assert e["param"] == "messages"
    for bad in ({"temperature": "hot"}, {"max_tokens": 0}, {"max_tokens": 1.5},
                {"stream": "yes"}, {"stop": [1]}, {"top_p": 7}, {"n": 2}, {"seed": "x"},
                {"messages": [{"role": "wizard", "content": "x"}]},
                {"messages": [{"role": "user", "content": 5}]},
                {"messages": [{"role": "user", "content": [{"type": "nope"}]}]},
                {"tools": "all"}, {"tool_choice": "sometimes", "tools": []}):
        body = {"model": "tiny-hello", "messages": MSG, **bad}
        r = hello.post("/v1/chat/completions", body)
        assert r.status_code == 422, (bad, r.text)
    e = err(hello.post("/v1/chat/completions", {
        "model": "tiny-hello", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]}), 400,
        "unsupported_content")
    # Unknown fields are ignored, as OpenAI clients send many.
    assert hello.chat("tiny-hello", user="u1", logit_bias={}).status_code == 200


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_never_reach_a_sampler(hello, constant):
    # Python's json takes NaN; the model then sampled garbage until its context was full.
    raw = ('{"model": "tiny-hello", "messages": [{"role": "user", "content": "Hi"}], '
           f'"temperature": {constant}}}')
    e = err(hello.http.post(hello.url + "/v1/chat/completions", data=raw,
                            headers={"Content-Type": "application/json"}), 400, "malformed_json")
    assert constant in e["message"] and "finite" in e["message"]
    assert e["param"] == "temperature" and e["message"].startswith("temperature: ")


def test_overflowing_numbers_are_refused_by_field(hello):
    # Refused as the body is parsed (as NaN is), wherever the number is, not only where a
    # field's check looks: a gateway once forwarded it as null.
    raw = ('{"model": "tiny-hello", "messages": [{"role": "user", "content": "Hi"}], '
           '"temperature": 1e999}')
    e = err(hello.http.post(hello.url + "/v1/chat/completions", data=raw,
                            headers={"Content-Type": "application/json"}), 400,
            "malformed_json")
    assert e["param"] == "temperature" and "finite" in e["message"]


def test_lone_surrogate_is_a_400_naming_the_field(hello):
    raw = '{"model": "tiny-hello", "messages": [{"role": "user", "content": "a\\udc80b"}]}'
    e = err(hello.http.post(hello.url + "/v1/chat/completions", data=raw,
                            headers={"Content-Type": "application/json"}), 400, "malformed_json")
    assert e["param"] == "messages[0].content" and "surrogate" in e["message"]
    # A valid pair, escaped, is one character and fine.
    ok = raw.replace("\\udc80", "\\ud83d\\ude00")
    assert hello.http.post(hello.url + "/v1/chat/completions", data=ok, headers={
        "Content-Type": "application/json"}).status_code == 200


@pytest.mark.parametrize("depth", [65, 5000, 100_000])
def test_deep_nesting_is_a_400_not_a_recursion_error(hello, depth):
    raw = ('{"model": "tiny-hello", "messages": [{"role": "user", "content": "Hi"}], '
           '"metadata": ' + "[" * depth + "]" * depth + "}")
    e = err(hello.http.post(hello.url + "/v1/chat/completions", data=raw,
                            headers={"Content-Type": "application/json"}), 400,
            "invalid_request_body")
    assert "deep" in e["message"]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.mark.parametrize("bad, param", [
    ({"tools": TOOLS, "tool_choice": {"function": {"name": "get_weather"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": "get_weather"}},
     "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"messages": [*MSG, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                      "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": 5, "content": "sunny"}]}, "messages[2].tool_call_id"),
    ({"messages": [*MSG, {"role": "assistant", "content": None, "tool_calls": [
        {"id": 7, "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages[1].tool_calls[0].id"),
    ({"messages": [*MSG, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": 3}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
])
def test_tool_fields_are_checked(hello, bad, param):
    e = err(hello.post("/v1/chat/completions", {"model": "tiny-hello", "messages": MSG, **bad}),
            422, "invalid_request_body")
    assert e["param"] == param


def test_body_over_the_limit_is_413(neuron_factory):
    n = neuron_factory(max_body_bytes=2048)
    r = n.chat("x", "a" * 4096)
    err(r, 413, "request_too_large")


def test_unknown_model_404(hello):
    e = err(hello.chat("nope"), 404, "model_not_found")
    assert "file:tiny-hello" in e["message"]


def test_context_length_exceeded(hello):
    e = err(hello.chat("tiny-hello", "word " * 600), 400, "context_length_exceeded")
    assert e["max"] == 511 and e["estimated_prompt_tokens"] > 511


def test_auth_token_guards_everything_but_health(neuron_factory):
    n = neuron_factory(auth_token="s3cret")
    assert n.get("/health").status_code == 200
    assert n.get("/version").status_code == 200
    for path in ("/models", "/discovery", "/metrics"):
        err(n.get(path), 401, "invalid_api_key")
    err(n.get("/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
    ok = n.get("/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    # /health is public; which sessions a model served, only with the token.
    auth = {"Authorization": "Bearer s3cret"}
    assert n.post("/models/load", {"model_id": "file:tiny-hello"}, headers=auth).ok
    assert n.post("/v1/chat/completions", {"model": "file:tiny-hello", "max_tokens": 1,
                  "messages": [{"role": "user", "content": "Hi"}]},
                  headers=auth | {"X-Helexa-Session": "5e55" * 4}).ok
    (public,) = n.get("/health").json()["models"]
    assert "sessions" not in public and public["id"] == "file:tiny-hello"
    (private,) = n.get("/health", headers=auth).json()["models"]
    assert private["sessions"].keys() == {"5e55" * 4}


def test_chat_template_errors_are_400(neuron, models_dir):
    from cortex.testing.tiny_gguf import build_tiny_gguf

    build_tiny_gguf(models_dir / "strict.gguf", script=SCRIPT_HELLO, chat_template=(
        "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}"
        "{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"))
    try:
        neuron.load("file:strict")
        r = neuron.post("/v1/chat/completions", {"model": "strict", "messages": [
            {"role": "assistant", "content": "x"}]})
        e = err(r, 400, "invalid_messages")
        assert "first must be user" in e["message"]
    finally:
        (models_dir / "strict.gguf").unlink()


LONG = "file:tiny-long"


@pytest.fixture
def busy_factory(neuron_factory):
    """A neuron with the long-running model loaded and a way to keep it busy.

    One slot (parallel = 1), so that a second request has to queue."""

    def make(parallel=1, **admission):
        n = neuron_factory(n_ctx=65536, parallel=parallel,
                           admission=AdmissionConfig(**admission))
        n.load(LONG)
        return n, n.neuron.registry.models[LONG].scheduler

    return make


def _slow_job(neuron, max_tokens=60_000, **headers):
    """Start a generation of seconds in a thread; return (thread, result holder)."""
    out = {}

    def run():
        out["r"] = neuron.post("/v1/chat/completions", {
            "model": LONG, "messages": MSG, "max_tokens": max_tokens}, headers=headers)

    t = threading.Thread(target=run)
    t.start()
    return t, out


def _end(neuron, *threads):
    """Unload the busy model (cancels everything) and wait for the callers."""
    neuron.post("/models/unload", {"model_id": LONG})
    for t in threads:
        t.join()


def test_queue_full_is_503_with_retry_after(busy_factory):
    n, worker = busy_factory(max_queue_depth=1, max_per_principal=10)
    t1, _ = _slow_job(n)
    wait_for(lambda: worker.in_flight == 1, "worker.in_flight == 1", 20)
    t2, _ = _slow_job(n, max_tokens=5)
    wait_for(lambda: worker.queue_depth == 1, "worker.queue_depth == 1", 20)
    r = n.chat(LONG, max_tokens=1)
    err(r, 503, "rate_limit_exceeded")
    assert int(r.headers["Retry-After"]) >= 1
    metrics = n.get("/metrics").text
    assert f'neuron_rejections_total{{model="{LONG}",reason="queue_full"}} 1.0' in metrics
    assert n.get("/health").json()["models"][0]["rejections"] == {"queue_full": 1}
    _end(n, t1, t2)
    n.load(LONG)
    assert n.chat(LONG, max_tokens=1).status_code == 200


def test_per_principal_cap_is_429(busy_factory):
    n, worker = busy_factory(max_per_principal=1)
    t1, _ = _slow_job(n, **{"X-Helexa-Account-Id": "acct-1"})
    wait_for(lambda: worker.in_flight == 1, "worker.in_flight == 1", 20)
    r = n.post("/v1/chat/completions", {"model": LONG, "messages": MSG, "max_tokens": 1},
               headers={"X-Helexa-Account-Id": "acct-1"})
    err(r, 429, "rate_limit_exceeded")
    t2, out2 = _slow_job(n, max_tokens=1, **{"X-Helexa-Account-Id": "acct-2"})
    # another account is admitted
    wait_for(lambda: worker.queue_depth == 1, "worker.queue_depth == 1", 20)
    _end(n, t1, t2)
    err(out2["r"], 503, "model_unloaded")


def test_max_wait_gives_503_and_frees_the_queue(busy_factory):
    n, worker = busy_factory(max_wait_secs=0.3)
    t1, _ = _slow_job(n)
    wait_for(lambda: worker.in_flight == 1, "worker.in_flight == 1", 20)
    r = n.chat(LONG, max_tokens=1)
    err(r, 503, "rate_limit_exceeded")
    assert worker.queue_depth == 0
    metrics = n.get("/metrics").text
    assert f'neuron_rejections_total{{model="{LONG}",reason="queue_timeout"}} 1.0' in metrics
    _end(n, t1)


def test_keepalive_comments_while_queued(busy_factory, monkeypatch):
    from cortex.neuron import inference

    monkeypatch.setattr(inference, "KEEPALIVE_SECS", 0.05)
    n, worker = busy_factory()
    t1, _ = _slow_job(n)
    wait_for(lambda: worker.in_flight == 1, "worker.in_flight == 1", 20)
    r = n.post("/v1/chat/completions", {"model": LONG, "messages": MSG, "max_tokens": 1,
                                        "stream": True}, stream=True)
    lines = r.iter_lines(decode_unicode=True)
    seen = [next(lines) for _ in range(4)]
    assert ": keep-alive" in seen
    _end(n, t1)
    rest = [line for line in lines if line]
    assert '"model_unloaded"' in "".join(rest) and rest[-1] == "data: [DONE]"


def test_client_disconnect_mid_stream_frees_the_slot(busy_factory):
    n, worker = busy_factory()
    s = n.hold("/v1/chat/completions", {"model": LONG, "stream": True, "max_tokens": 60000,
                                        "messages": MSG})
    wait_for(lambda: worker.in_flight == 1, "worker.in_flight == 1", 20)
    s.close()
    wait_for(lambda: worker.in_flight == 0, "worker.in_flight == 0", 10)
    assert n.chat(LONG, max_tokens=2).status_code == 200


def test_unload_fails_running_and_queued_requests_cleanly(busy_factory):
    n, worker = busy_factory()
    t1, out1 = _slow_job(n)
    wait_for(lambda: worker.in_flight == 1, "worker.in_flight == 1", 20)
    t2, out2 = _slow_job(n, max_tokens=5)
    wait_for(lambda: worker.queue_depth == 1, "worker.queue_depth == 1", 20)
    _end(n, t1, t2)
    err(out1["r"], 503, "model_unloaded")  # the running one too: no clean-looking end
    err(out2["r"], 503, "model_unloaded")


def test_shutting_down_is_503(hello):
    hello.neuron.registry.shutting_down = True
    r = hello.chat("tiny-hello")
    err(r, 503, "shutting_down")
    assert r.headers["Retry-After"] == "15"
    assert hello.get("/health").json()["status"] == "shutting_down"
    hello.neuron.registry.shutting_down = False


def test_api_error_envelope_shape():
    e = ApiError("m", code="c", status=418, param="p", retry_after=3)
    assert e.body() == {"error": {"message": "m", "type": "server_error", "code": "c",
                                  "param": "p"}}
    assert e.headers() == {"Retry-After": "3"}
