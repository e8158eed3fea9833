"""The data plane: one prologue and one error envelope per dialect on every inference route,
embeddings, structured output, Claude Code's prompt cache, and spend that holds.

Real gateways on loopback; a neuron-API stand-in (cortex.testing.standin) where a real
neuron cannot be made to answer on cue, real neurons where the behaviour is the neuron's.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import anthropic
import numpy as np
import openai
import pytest
import requests
from werkzeug.serving import WSGIRequestHandler

from cortex.gateway.config import EntitlementsSection, KeyEntry, Limit, ModelEntry, Window
from cortex.testing.served import Served
from cortex.testing.waiting import wait_for

DATA = Path(__file__).parent / "data"
HI = [{"role": "user", "content": "Hi"}]
ROUTES = {  # path -> (dialect, a valid body)
    "/v1/chat/completions": ("openai", {"model": "standin", "messages": HI}),
    "/v1/completions": ("openai", {"model": "standin", "prompt": "Hi"}),
    "/v1/embeddings": ("openai", {"model": "standin", "input": "Hi"}),
    "/v1/messages": ("anthropic", {"model": "standin", "max_tokens": 8, "messages": HI}),
    "/v1/messages/count_tokens": ("anthropic", {"model": "standin", "messages": HI}),
}


def keys(tmp_path: Path, **caps) -> EntitlementsSection:
    entries = [KeyEntry(key="sk-ok", account_id="acme")]
    entries += [KeyEntry(key=f"sk-{name}", account_id="acme", hard_cap=cap,
                         window=Window(kind="rolling", seconds=600))
                for name, cap in caps.items()]
    return EntitlementsSection(require_auth=True, store=f"sqlite://{tmp_path}/spend.db",
                               keys=entries)


def spent(gw, key: str) -> int:
    entry = next(k for k in gw.gw.auth.keys if k.key == key)
    return gw.gw.auth.store.total(entry.key_id)


def check_envelope(r: requests.Response, dialect: str, status: int, kind: str) -> dict:
    """`kind`: the OpenAI error code, or the Anthropic error type."""
    assert r.status_code == status, r.text
    body = r.json()
    if dialect == "openai":
        assert set(body) == {"error"} and body["error"]["code"] == kind, body
        assert body["error"]["message"]
    else:
        assert body["type"] == "error" and body["error"]["type"] == kind, body
        assert set(body["error"]) == {"type", "message"} and body["error"]["message"]
    return body["error"]


# -- one prologue, each dialect's envelope -----------------------------------------------
@pytest.fixture
def plane(standin_factory, gateway_factory, tmp_path):
    s = standin_factory()
    gw = gateway_factory({"n1": s}, [ModelEntry(id="standin")], max_body_bytes=4000,
                         entitlements=keys(tmp_path, spent=5))
    gw.gw.auth.record(gw.gw.auth.principal("sk-spent"), 10)
    return gw


CASES = [  # (what, request kwargs, status, openai code, anthropic type)
    ("wrong method", {"method": "GET"}, 405, "method_not_allowed", "invalid_request_error"),
    ("no key", {"key": None}, 401, "invalid_api_key", "authentication_error"),
    ("unknown key", {"key": "sk-nobody"}, 401, "invalid_api_key", "authentication_error"),
    ("spent key", {"key": "sk-spent"}, 429, "rate_limit_exceeded", "rate_limit_error"),
    ("form body", {"data": b"model=x", "type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type", "invalid_request_error"),
    ("broken JSON", {"data": b'{"model": '}, 400, "malformed_json", "invalid_request_error"),
    ("deep JSON", {"data": b"[" * 100000 + b"]" * 100000}, 413, "request_too_large",
     "request_too_large"),
    ("not an object", {"data": b"[1]"}, 422, "invalid_request_body",
     "invalid_request_error"),
    ("no model", {"drop": "model"}, 400, "missing_model_field", "invalid_request_error"),
    ("unknown model", {"set": {"model": "nope"}}, 404, "model_not_found", "not_found_error"),
]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_route_refuses_in_its_own_dialect(plane, path, case):
    _, kw, status, code, kind = case
    dialect, body = ROUTES[path]
    body = dict(body, **kw.get("set", {}))
    body.pop(kw.get("drop", ""), None)
    headers = {"Content-Type": kw.get("type", "application/json")}
    key = kw.get("key", "sk-ok")
    if key and dialect == "anthropic":
        headers["x-api-key"] = key
    elif key:
        headers["Authorization"] = f"Bearer {key}"
    r = plane.http.request(kw.get("method", "POST"), plane.url + path, headers=headers,
                           data=kw.get("data", json.dumps(body).encode()), timeout=30)
    # Anthropic answers 400, never 415 or 422, for a body it cannot use.
    expected = status if dialect == "openai" or status not in (415, 422) else 400
    check_envelope(r, dialect, expected, code if dialect == "openai" else kind)


def test_nested_json_under_the_limit_is_a_400(plane):
    for path, (dialect, _) in ROUTES.items():
        r = plane.post(path, data=b"[" * 1900 + b"]" * 1900,
                       headers={"Authorization": "Bearer sk-ok", "x-api-key": "sk-ok",
                                "Content-Type": "application/json"})
        check_envelope(r, dialect, 400, "invalid_request_body" if dialect == "openai"
                       else "invalid_request_error")


def test_get_messages_is_an_anthropic_405(plane):
    r = plane.get("/v1/messages", headers={"x-api-key": "sk-ok"})
    assert check_envelope(r, "anthropic", 405, "invalid_request_error")["message"].startswith(
        "Method Not Allowed: GET /v1/messages")


def test_control_plane_stays_on_flask(plane):
    assert plane.get("/health").json()["status"] in ("ok", "degraded")
    r = plane.get("/v1/models", headers={"Authorization": "Bearer sk-ok"})
    assert [m["id"] for m in r.json()["data"]] == ["standin"]
    assert "/v1/embeddings" in plane.get("/").json()["endpoints"]


# -- retries -------------------------------------------------------------------------------
def test_a_neurons_500_is_not_retried_on_another_replica(standin_factory, gateway_factory):
    failing, healthy = standin_factory(chat_status=500), standin_factory()
    gw = gateway_factory({"n1": failing, "n2": healthy}, [ModelEntry(id="standin")])
    r = gw.chat("standin")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert r.headers["X-Cortex-Node"] == "n1"
    assert len(failing.hits("/v1/chat/completions")) == 1
    assert healthy.hits("/v1/chat/completions") == []  # the request's fault, not the node's


# -- embeddings ------------------------------------------------------------------------------
def test_embeddings_are_routed_like_chat(standin_factory, gateway_factory, tmp_path):
    cold, busy, idle = (standin_factory(("file:emb",), loaded=False),
                        standin_factory(("file:other",)), standin_factory(("file:other",)))
    gw = gateway_factory({"a": cold}, [ModelEntry(id="emb")],
                         aliases={"text-embedding-3-small": "emb"},
                         entitlements=keys(tmp_path, capped=5))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-capped", max_retries=0)
    out = client.embeddings.create(model="text-embedding-3-small", input=["a b c", "d e"])
    assert [d.index for d in out.data] == [0, 1] and len(out.data[0].embedding) == 4
    assert out.usage.prompt_tokens == 5
    assert [b["model_id"] for b in cold.hits("/models/load")] == ["file:emb"]  # cold load
    assert cold.hits("/v1/embeddings")[0]["model"] == "file:emb"  # the neuron's own id
    # Accounted once the reply is on the wire, so just after the client has it.
    wait_for(lambda: spent(gw, "sk-capped") == 5, "the embeddings' spend")
    metrics = gw.gw.metrics.registry.get_sample_value
    assert metrics("cortex_prompt_tokens_total", {"model": "emb", "node": "a"}) == 5
    with pytest.raises(openai.RateLimitError) as exc:  # billed by its prompt tokens
        client.embeddings.create(model="emb", input="more")
    assert exc.value.body["code"] == "rate_limit_exceeded"
    # Least busy of two replicas
    busy.in_flight = 3
    gw2 = gateway_factory({"busy": busy, "idle": idle}, [ModelEntry(id="other")])
    r = gw2.post("/v1/embeddings", {"model": "other", "input": "x"})
    assert r.status_code == 200 and r.headers["X-Cortex-Node"] == "idle"


def test_embeddings_on_a_real_neuron(neuron, gateway_factory):
    """A cold load through the gateway, then the neuron's own embeddings, relayed whole;
    the official client's default (base64) decodes to the same vectors."""
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello")])
    r = gw.post("/v1/embeddings", {"model": "tiny-hello", "input": ["Hi there", "Hello"],
                                   "encoding_format": "float"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Cortex-Node"] == "n1"
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1] and body["model"] == "file:tiny-hello"
    assert body["data"][0]["object"] == "embedding" and len(body["data"][0]["embedding"]) == 64
    assert body["usage"]["prompt_tokens"] > 0
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
    out = client.embeddings.create(model="tiny-hello", input=["Hi there", "Hello"])
    assert np.allclose([d.embedding for d in out.data], [d["embedding"] for d in body["data"]],
                       atol=1e-6)
    with pytest.raises(openai.BadRequestError) as exc:  # the neuron's 400, passed through
        client.embeddings.create(model="tiny-hello", input="")
    assert exc.value.body["code"] == "empty_input"


# -- structured output across dialects -----------------------------------------------------
def test_structured_output_reaches_the_neuron(standin_factory, gateway_factory):
    s = standin_factory()
    gw = gateway_factory({"n1": s}, [ModelEntry(id="standin")])
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    client.messages.create(model="standin", max_tokens=8, messages=HI, output_config={
        "format": {"type": "json_schema", "schema": schema}, "effort": "high"})
    assert s.hits("/v1/chat/completions")[-1]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": schema,
                                               "strict": True}}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
        model="standin", messages=HI, response_format=fmt)
    assert s.hits("/v1/chat/completions")[-1]["response_format"] == fmt  # as is


# -- Claude Code and the prompt cache --------------------------------------------------------
def test_claude_codes_billing_line_does_not_change_the_prompt(standin_factory,
                                                             gateway_factory):
    s = standin_factory(("file:claude-opus-4-7",))
    gw = gateway_factory({"n1": s}, [ModelEntry(id="claude-opus-4-7")])
    body = json.loads((DATA / "claude_code_2.1.197_request.json").read_text())
    billing = body["system"][0]["text"]
    assert billing.startswith("x-anthropic-billing-header: cc_version=2.1.197.")
    for suffix in ("725", "f3e"):
        turn = copy.deepcopy(body)
        turn["model"] = "claude-opus-4-7"
        turn["system"][0]["text"] = billing.replace("2.1.197.725", f"2.1.197.{suffix}")
        r = gw.post("/v1/messages?beta=true", turn, headers={"x-api-key": "x"})
        assert r.status_code == 200, r.text
        assert r.text.count("event: message_stop") == 1
    first, second = s.hits("/v1/chat/completions")
    assert first["messages"] == second["messages"]  # byte for byte, for the neuron's cache
    system = first["messages"][0]["content"]
    assert system.startswith("x-anthropic-billing-header: cc_version=2.1.197; "
                             "cc_entrypoint=sdk-cli;\n\n")
    assert "\n\n".join(b["text"] for b in body["system"][1:]) in system  # the rest as it was


def test_cached_tokens_are_cache_reads(standin_factory, gateway_factory):
    s = standin_factory(cached_tokens=3)
    gw = gateway_factory({"n1": s}, [ModelEntry(id="standin")])
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    m = client.messages.create(model="standin", max_tokens=8, messages=HI)
    prompt = len(json.dumps(s.hits("/v1/chat/completions")[-1]["messages"])) // 4
    assert (m.usage.input_tokens, m.usage.cache_read_input_tokens) == (prompt - 3, 3)
    with client.messages.stream(model="standin", max_tokens=8, messages=HI) as stream:
        final = stream.get_final_message()
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (prompt - 3, 3)


def test_second_turn_reads_its_prompt_from_the_neurons_cache(neuron, gateway_factory):
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello")])
    client = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
    billing = "x-anthropic-billing-header: cc_version=2.1.197.{}; cc_entrypoint=cli;"
    system = [{"type": "text", "text": billing.format("a1c")},
              {"type": "text", "text": "You are a helpful agent. " * 3}]
    turn = [{"role": "user", "content": "Hello there, please greet me. " * 2}]
    first = client.messages.create(model="tiny-hello", max_tokens=8, system=system,
                                   messages=turn)
    system[0]["text"] = billing.format("9be")  # Claude Code's next request
    turn += [{"role": "assistant", "content": first.content[0].text},
             {"role": "user", "content": "Again."}]
    second = client.messages.create(model="tiny-hello", max_tokens=8, system=system,
                                    messages=turn)
    prompt = second.usage.input_tokens + second.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens > prompt / 2, second.usage
    # Streamed, as Claude Code asks: message_start, the first event, says it already.
    system[0]["text"] = billing.format("47d")
    turn += [{"role": "assistant", "content": second.content[0].text},
             {"role": "user", "content": "Once more."}]
    events = list(client.messages.create(model="tiny-hello", max_tokens=8, system=system,
                                         messages=turn, stream=True))
    assert events[0].type == "message_start"
    start = events[0].message.usage
    final = next(e for e in events if e.type == "message_delta").usage
    assert start.cache_read_input_tokens > (start.input_tokens
                                            + start.cache_read_input_tokens) / 2, start
    assert (start.input_tokens, start.cache_read_input_tokens) == (
        final.input_tokens, final.cache_read_input_tokens)


# -- spend that holds --------------------------------------------------------------------
def hang_up_mid_stream(gw, key: str, max_tokens: int, path: str = "/v1/chat/completions"
                       ) -> int:
    """The stream's status: 200 (hung up on after its first token), or 429 (the key's cap
    has no room left for the prompt and one token)."""
    body = {"model": "tiny-loop", "messages": HI, "max_tokens": max_tokens, "stream": True}
    with requests.post(gw.url + path, json=body, stream=True, timeout=30,
                       headers={"Authorization": f"Bearer {key}", "x-api-key": key}) as r:
        assert r.status_code in (200, 429), r.text
        if r.status_code == 429:
            return 429
        for line in r.iter_lines():  # up to the first generated token
            if b"content_block_delta" in line or (b'"delta":{"content":"' in line.replace(
                    b" ", b"") and b'"content":""' not in line.replace(b" ", b"")):
                break
    # the connection closes here, before the stream's end
    return 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_client_that_hangs_up_is_billed(neuron, gateway_factory, tmp_path, path):
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-loop")],
                         entitlements=keys(tmp_path, capped=120))
    for _ in range(10):  # streams of 30 tokens, each cut by its client before its end
        before = spent(gw, "sk-capped")
        if hang_up_mid_stream(gw, "sk-capped", 30, path) == 429:
            break  # the cap has less room left than the next request needs
        # Its prompt (21 tokens) and what it generated (all 30 when the gateway read the
        # neuron's usage chunk; at least the tokens relayed when not).
        wait_for(lambda b=before: spent(gw, "sk-capped") >= b + 21 + 1, "the stream's spend")
        if spent(gw, "sk-capped") >= 120:
            break
    r = gw.post(path, {"model": "tiny-loop", "messages": HI, "max_tokens": 5},
                headers={"Authorization": "Bearer sk-capped", "x-api-key": "sk-capped"})
    assert r.status_code == 429, r.text


def test_concurrent_requests_cannot_all_pass_one_cap_check(neuron, gateway_factory,
                                                          tmp_path):
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-long")],
                         entitlements=keys(tmp_path, capped=100))
    auth = {"Authorization": "Bearer sk-capped"}
    with requests.post(gw.url + "/v1/chat/completions", stream=True, timeout=30, headers=auth,
                       json={"model": "tiny-long", "messages": HI, "max_tokens": 400,
                             "stream": True}) as long:
        assert long.status_code == 200
        next(long.iter_lines())  # it runs, holding up to 400 tokens of a 100-token cap
        r = gw.post("/v1/chat/completions", {"model": "tiny-long", "messages": HI,
                                             "max_tokens": 1}, headers=auth)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"


class _Http11(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked replies, as gunicorn sends them


def test_a_store_error_after_done_still_ends_the_chunked_body(standin_factory,
                                                              gateway_factory, tmp_path,
                                                              monkeypatch):
    s = standin_factory()
    gw = gateway_factory({"n1": s}, [ModelEntry(id="standin")], entitlements=keys(tmp_path))

    def broken(*args, **kwargs):
        raise OSError("database is locked")

    monkeypatch.setattr(gw.gw.auth.store, "record", broken)
    http11 = Served(gw.app, request_handler=_Http11)
    try:
        r = http11.post("/v1/chat/completions",
                        {"model": "standin", "messages": HI, "stream": True},
                        headers={"Authorization": "Bearer sk-ok"})
        assert r.status_code == 200 and r.headers["Transfer-Encoding"] == "chunked"
        assert r.text.endswith("data: [DONE]\n\n")  # the body ended (no ChunkedEncodingError)
    finally:
        http11.close()


# -- count_tokens ----------------------------------------------------------------------------
def test_count_tokens_checks_caps(standin_factory, gateway_factory, tmp_path):
    s = standin_factory()
    gw = gateway_factory({"n1": s}, [ModelEntry(id="standin")],
                         entitlements=keys(tmp_path, capped=5))
    client = anthropic.Anthropic(base_url=gw.url, api_key="sk-capped", max_retries=0)
    assert client.messages.count_tokens(model="standin", messages=HI).input_tokens > 0
    gw.gw.auth.record(gw.gw.auth.principal("sk-capped"), 5)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.count_tokens(model="standin", messages=HI)


def test_context_check_runs_before_a_cold_load(standin_factory, gateway_factory):
    s = standin_factory(("file:small",), loaded=False)
    gw = gateway_factory({"n1": s}, [ModelEntry(id="small", limit=Limit(context=10))])
    for path, dialect in (("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")):
        r = gw.post(path, {"model": "small", "max_tokens": 4,
                           "messages": [{"role": "user", "content": "x" * 400}]})
        check_envelope(r, dialect, 400, "context_length_exceeded" if dialect == "openai"
                       else "invalid_request_error")
    assert s.hits("/models/load") == []  # refused before anything was loaded
