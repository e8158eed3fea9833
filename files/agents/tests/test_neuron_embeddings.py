"""POST /v1/embeddings on a real neuron: OpenAI's shape through the official client, pooling
as the GGUF says, normalized vectors, batches equal to one-by-one, embeddings-only loads,
chat going on beside embeddings, shared admission, and every error naming its field.

The tiny models' hidden state at a position is rmsnorm(embd[token]) (tiny_gguf), and the
script tokens "Hello" and " from" each have a direction of their own; so with unit vectors
h = e("Hello") and f = e(" from"), e("Hello from") is h under cls, f under last and
(h + f) / |h + f| under mean.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cortex.testing.tiny_gguf import SCRIPTS, build_tiny_gguf
from cortex.testing.waiting import wait_for

LONG = "file:tiny-long"
MSG = [{"role": "user", "content": "Hi"}]
TOL = 1e-3  # F16 weights


@pytest.fixture(scope="module")
def pooled_dir(tmp_path_factory) -> Path:
    """One tiny model per pooling the GGUF can name, one with none, an embedding model (a
    pooling and no chat template), and a long-running chat model."""
    d = tmp_path_factory.mktemp("pooled")
    build_tiny_gguf(d / "tiny-hello.gguf", name="tiny-hello")
    for pooling in ("none", "mean", "cls", "last", "rank"):
        build_tiny_gguf(d / f"tiny-{pooling}.gguf", pooling=pooling, name=f"tiny-{pooling}")
    build_tiny_gguf(d / "tiny-embedder.gguf", pooling="cls", chat_template="",
                    name="tiny-embedder")
    build_tiny_gguf(d / "tiny-long.gguf", script=SCRIPTS["loop"][0], loop=True,
                    context_length=65536, name="tiny-long")
    return d


@pytest.fixture
def pooled(neuron_factory, pooled_dir):
    return neuron_factory(models_dir=str(pooled_dir))


@pytest.fixture
def hello(neuron):
    neuron.load("file:tiny-hello")
    return neuron


def embed(n, model: str, inputs, **extra) -> np.ndarray:
    r = n.post("/v1/embeddings", {"model": model, "input": inputs, **extra})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]])


def err(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert e["code"] == code, e
    assert e["message"] and e["type"]
    return e


def test_official_client_float_and_base64(hello):
    client = openai.OpenAI(base_url=hello.url + "/v1", api_key="none", max_retries=0)
    out = client.embeddings.create(model="tiny-hello", input=["Hello", "Hello from"],
                                   encoding_format="float")
    assert out.object == "list" and out.model == "file:tiny-hello"
    assert [d.index for d in out.data] == [0, 1] and out.data[0].object == "embedding"
    assert out.usage.prompt_tokens == 3 and out.usage.total_tokens == 3
    floats = np.array([d.embedding for d in out.data])
    assert floats.shape == (2, 64)
    assert np.allclose(np.linalg.norm(floats, axis=1), 1.0, atol=1e-6)  # L2-normalized
    # The client asks for base64 by default and decodes it: the same float32 values.
    b64 = client.embeddings.create(model="tiny-hello", input=["Hello", "Hello from"])
    assert np.array_equal(np.array([d.embedding for d in b64.data], dtype=np.float32),
                          floats.astype(np.float32))
    raw = hello.post("/v1/embeddings", {"model": "tiny-hello", "input": "Hello",
                                        "encoding_format": "base64"}).json()
    assert isinstance(raw["data"][0]["embedding"], str)
    one = client.embeddings.create(model="tiny-hello", input="Hello", encoding_format="float")
    assert np.allclose(one.data[0].embedding, floats[0], atol=1e-6)
    metrics = hello.get("/metrics").text
    assert ('neuron_requests_total{endpoint="embeddings",model="file:tiny-hello",'
            'status="200"} 4.0') in metrics


@pytest.mark.parametrize("pooling", ["absent", "none", "mean", "cls", "last"])
def test_pooling_follows_the_gguf(pooled, pooling):
    name = "tiny-hello" if pooling == "absent" else f"tiny-{pooling}"
    model = pooled.load(f"file:{name}")["model"]
    expected = "mean" if pooling in ("absent", "none") else pooling  # a vector per input
    assert model["embeddings"] == {"dimensions": 64, "pooling": expected}
    assert "embeddings" in model["capabilities"]
    h, f, hf = embed(pooled, name, ["Hello", " from", "Hello from"])
    assert np.allclose(np.linalg.norm([h, f, hf], axis=1), 1.0, atol=1e-6)
    assert not np.allclose(h, f, atol=0.1)  # two directions, so the poolings differ
    want = {"mean": (h + f) / np.linalg.norm(h + f), "cls": h, "last": f}[expected]
    assert np.allclose(hf, want, atol=TOL)


def test_a_batch_gives_the_vectors_one_by_one_does(pooled):
    pooled.load("file:tiny-mean")
    words = ["Hello", " from", " tiny", " cortex"]
    # 120 inputs of 1 to 4 tokens: several decodes (512 tokens, 64 inputs each at most).
    sizes = [1 + (i // 4) % 4 for i in range(120)]
    texts = ["".join(words[(i + k) % 4] for k in range(sizes[i])) for i in range(120)]
    batch = embed(pooled, "tiny-mean", texts)
    singles = {t: embed(pooled, "tiny-mean", t)[0] for t in set(texts)}
    assert np.allclose(batch, [singles[t] for t in texts], atol=1e-5)
    assert len({tuple(np.round(v, 3)) for v in singles.values()}) > 4  # not all alike
    tokens = pooled.post("/v1/embeddings", {"model": "tiny-mean", "input": texts}).json()
    assert tokens["usage"]["prompt_tokens"] == sum(sizes)


def test_a_batch_equals_one_by_one_with_real_attention(neuron_factory, smollm2_file, tmp_path):
    """SmolLM2 mixes the tokens of a sequence: a batch whose sequences saw each other would
    differ from one-by-one."""
    (tmp_path / "smol.gguf").symlink_to(smollm2_file)
    n = neuron_factory(models_dir=str(tmp_path))
    n.load("file:smol")
    texts = ["The capital of France is Paris.", "hi",
             "A longer sentence about the weather in the mountains, with rain tomorrow.",
             "Dogs are loyal animals."]
    batch = embed(n, "smol", texts)
    singles = np.array([embed(n, "smol", t)[0] for t in texts])
    assert np.allclose(batch, singles, atol=1e-4)
    sims = batch @ batch.T
    assert sims[0, 1] < 0.99 and sims[2, 3] < 0.99  # distinct texts, distinct vectors


def test_token_lists_are_embedded_as_given(pooled):
    pooled.load("file:tiny-cls")
    ids = pooled.post("/tokenize", {"model": "tiny-cls", "prompt": "Hello from"}).json()
    assert ids["tokens"] == 2
    text = embed(pooled, "tiny-cls", "Hello")
    r = pooled.post("/v1/embeddings", {"model": "tiny-cls", "input": [[5, 6, 7], [8]]})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 4
    one = pooled.post("/v1/embeddings", {"model": "tiny-cls", "input": [5, 6]}).json()
    assert len(one["data"]) == 1 and one["usage"]["prompt_tokens"] == 2
    # Byte tokens share the tiny model's default direction: cls of [5, 6] is that of [8].
    assert np.allclose(one["data"][0]["embedding"], r.json()["data"][1]["embedding"],
                       atol=TOL)
    assert not np.allclose(text[0], one["data"][0]["embedding"], atol=0.1)


def test_a_model_loaded_for_embeddings_alone(pooled):
    m = pooled.load("file:tiny-hello", embeddings_only=True)["model"]
    assert m["embeddings_only"] is True and m["capabilities"] == ["embeddings"]
    assert m["slots"] == 0 and m["limit"]["output"] == 0
    assert embed(pooled, "tiny-hello", "Hello").shape == (1, 64)
    e = err(pooled.chat("tiny-hello"), 400, "model_embeddings_only")
    assert e["param"] == "model" and "embeddings_only" in e["message"]
    health = {x["id"]: x for x in pooled.get("/health").json()["models"]}
    assert health["file:tiny-hello"]["slots"] == {"busy": 0, "total": 0}
    # A GGUF that names a pooling and has no chat template is an embedding model: loaded
    # for embeddings alone without asking.
    m = pooled.load("file:tiny-embedder")["model"]
    assert m["embeddings_only"] is True and m["embeddings"]["pooling"] == "cls"
    err(pooled.post("/models/load", {"model_id": "file:tiny-cls", "embeddings_only": "yes"}),
        422, "invalid_request_body")


def test_a_reranker_does_not_embed(pooled):
    pooled.load("file:tiny-rank")
    e = err(pooled.post("/v1/embeddings", {"model": "tiny-rank", "input": "Hello"}), 400,
            "embeddings_unsupported")
    assert "rerank" in e["message"]
    r = pooled.post("/models/load", {"model_id": "file:tiny-rank", "embeddings_only": True})
    assert r.status_code == 200  # already loaded for chat: the load joins it
    pooled.post("/models/unload", {"model_id": "file:tiny-rank"})
    r = pooled.post("/models/load", {"model_id": "file:tiny-rank", "embeddings_only": True})
    assert r.status_code == 422 and "rerank" in r.json()["error"]["detail"]


def test_a_chat_model_chats_while_serving_embeddings(neuron_factory, pooled_dir):
    n = neuron_factory(models_dir=str(pooled_dir), n_ctx=65536, parallel=2)
    before = n.load(LONG)["model"]["vram_used_mb"]
    sched = n.neuron.registry.models[LONG].scheduler
    res: dict = {}

    def long_chat():
        res["long"] = n.post("/v1/chat/completions", {"model": LONG, "messages": MSG,
                                                      "max_tokens": 60000})

    t = threading.Thread(target=long_chat)
    t.start()
    wait_for(lambda: sched.in_flight == 1, "the long generation")
    vectors = embed(n, LONG, ["la di", "Hi"])  # between the long one's steps
    assert vectors.shape == (2, 64) and t.is_alive()
    r = n.chat(LONG, max_tokens=3)  # and the other slot still chats
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert t.is_alive()
    # The embeddings context made on first use counts in the model's size.
    after = next(m for m in n.get("/models").json() if m["id"] == LONG)["vram_used_mb"]
    assert after > before
    assert n.post("/models/unload", {"model_id": LONG}).status_code == 200
    assert not sched.alive  # its thread gone before both contexts were freed
    t.join()
    err(res["long"], 503, "model_unloaded")


def test_embeddings_share_the_chat_admission_limits(neuron_factory, pooled_dir):
    from cortex.neuron.config import AdmissionConfig

    n = neuron_factory(models_dir=str(pooled_dir), n_ctx=65536,
                       admission=AdmissionConfig(max_per_principal=1))
    n.load(LONG)
    sched = n.neuron.registry.models[LONG].scheduler
    acct = {"X-Helexa-Account-Id": "acct-1"}
    res: dict = {}
    t = threading.Thread(target=lambda: res.setdefault("r", n.post(
        "/v1/chat/completions", {"model": LONG, "messages": MSG, "max_tokens": 60000},
        headers=acct)))
    t.start()
    wait_for(lambda: sched.in_flight == 1, "the long generation")
    r = n.post("/v1/embeddings", {"model": LONG, "input": "Hi"}, headers=acct)
    e = err(r, 429, "rate_limit_exceeded")
    assert "max_per_principal" in e["message"] and r.headers["Retry-After"]
    r = n.post("/v1/embeddings", {"model": LONG, "input": "Hi"},
               headers={"X-Helexa-Account-Id": "acct-2"})
    assert r.status_code == 200
    n.post("/models/unload", {"model_id": LONG})
    t.join()
    err(n.post("/v1/embeddings", {"model": LONG, "input": "Hi"}), 404, "model_not_found")


BAD = [  # (body over {"model": "tiny-hello"}, status, code, param)
    ({}, 400, "missing_input", "input"),
    ({"input": None}, 400, "missing_input", "input"),
    ({"input": ""}, 400, "empty_input", "input"),
    ({"input": []}, 400, "empty_input", "input"),
    ({"input": ["Hi", ""]}, 400, "empty_input", "input[1]"),
    ({"input": [[]]}, 400, "empty_input", "input[0]"),
    ({"input": 5}, 400, "invalid_input", "input"),
    ({"input": {"text": "Hi"}}, 400, "invalid_input", "input"),
    ({"input": ["Hi", 3]}, 400, "invalid_input", "input[1]"),
    ({"input": [1, "Hi"]}, 400, "invalid_input", "input[1]"),
    ({"input": [[1, True]]}, 400, "invalid_input", "input[0][1]"),
    ({"input": [1.5]}, 400, "invalid_input", "input[0]"),
    ({"input": [None]}, 400, "invalid_input", "input[0]"),
    ({"input": [-1]}, 400, "invalid_input", "input[0]"),
    ({"input": [[3], [10**6]]}, 400, "invalid_input", "input[1][0]"),
    ({"input": ["x"] * 2049}, 400, "invalid_input", "input"),
    ({"input": "word " * 600}, 400, "context_length_exceeded", "input"),
    ({"input": ["Hi", "word " * 600]}, 400, "context_length_exceeded", "input[1]"),
    ({"input": "Hi", "encoding_format": "hex"}, 400, "invalid_encoding_format",
     "encoding_format"),
    ({"input": "Hi", "encoding_format": 1}, 400, "invalid_encoding_format", "encoding_format"),
    ({"input": "Hi", "dimensions": 3}, 400, "invalid_dimensions", "dimensions"),
    ({"input": "Hi", "dimensions": "64"}, 400, "invalid_dimensions", "dimensions"),
    ({"input": "Hi", "model": None}, 400, "missing_model_field", "model"),
    ({"input": "Hi", "model": 7}, 400, "missing_model_field", "model"),
    ({"input": "Hi", "model": "nope"}, 404, "model_not_found", "model"),
]


@pytest.mark.parametrize("extra, status, code, param", BAD)
def test_bad_requests_name_the_field(hello, extra, status, code, param):
    e = err(hello.post("/v1/embeddings", {"model": "tiny-hello", **extra}), status, code)
    assert e["param"] == param


def test_non_finite_token_and_too_long_details(hello):
    raw = '{"model": "tiny-hello", "input": [1e999]}'
    e = err(hello.http.post(hello.url + "/v1/embeddings", data=raw,
                            headers={"Content-Type": "application/json"}), 400, "malformed_json")
    assert e["param"] == "input[0]" and "finite" in e["message"]
    e = err(hello.post("/v1/embeddings", {"model": "tiny-hello", "input": "word " * 600}), 400,
            "context_length_exceeded")
    assert e["max"] == 512 and e["estimated_prompt_tokens"] > 512
    # Nothing is left stuck: the model still embeds and chats.
    assert embed(hello, "tiny-hello", "Hello").shape == (1, 64)
    assert hello.chat("tiny-hello").status_code == 200
    h = hello.get("/health").json()["models"][0]
    assert h["in_flight"] == 0 and h["queue_depth"] == 0


scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False) | st.text(max_size=12))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=10)
inputs = (anything | st.lists(st.text(max_size=30), max_size=6)
          | st.lists(st.lists(st.integers(-3, 500), max_size=6), max_size=4))
fields = st.dictionaries(st.sampled_from(["model", "encoding_format", "dimensions", "user"]),
                         anything | st.sampled_from(["float", "base64", "tiny-hello", 64]),
                         max_size=3)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(inp=inputs, extra=fields)
def test_any_body_is_an_answer_or_a_4xx_never_a_500(hello, inp, extra):
    body = {"model": "tiny-hello", "input": inp, **extra}
    r = hello.http.post(hello.url + "/v1/embeddings", data=json.dumps(body),
                        headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code < 500, (body, r.text)
    if r.status_code == 200:
        data = r.json()["data"]
        assert [d["index"] for d in data] == list(range(len(data))) and data
    else:
        assert r.json()["error"]["message"]


def test_inputs_times_dimensions_are_bounded_by_name(neuron_factory, pooled_dir):
    # 2,048 one-token inputs are an 8 KB request; at 1,024 dimensions the reply was 45 MB
    # and a second of the neuron's time. Here the tiny model's 64 dimensions, 3 vectors.
    n = neuron_factory(models_dir=str(pooled_dir), max_embedding_values=3 * 64)
    n.load("file:tiny-mean")
    assert embed(n, "file:tiny-mean", ["a", "b", "c"]).shape == (3, 64)
    r = n.post("/v1/embeddings", {"model": "file:tiny-mean", "input": ["a", "b", "c", "d"]})
    e = err(r, 400, "embeddings_too_large")
    assert e["param"] == "input" and e["max"] == 192
    assert "4 inputs x 64 dimensions" in e["message"] and "at most 3 inputs" in e["message"]
    assert "max_embedding_values" in e["message"]


def test_a_reply_of_many_vectors_is_whole_and_in_order(neuron_factory, pooled_dir):
    # Written a few vectors at a time: every piece joins into one JSON document.
    n = neuron_factory(models_dir=str(pooled_dir))
    n.load("file:tiny-mean")
    texts = ["Hello", "from", "tiny", "cortex"] * 25  # 100 inputs: four pieces and a bit
    r = n.post("/v1/embeddings", {"model": "file:tiny-mean", "input": texts})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert [d["index"] for d in body["data"]] == list(range(100))
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert np.allclose(vectors[:4], vectors[4:8]) and np.allclose(vectors, vectors[[
        i % 4 for i in range(100)]])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 100
    b64 = n.post("/v1/embeddings", {"model": "file:tiny-mean", "input": texts,
                                    "encoding_format": "base64"}).json()
    import base64

    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), "<f4")
                        for d in b64["data"]])
    assert np.allclose(decoded, vectors, atol=1e-7)


def test_the_gateway_reads_a_reply_whole_only_up_to_max_reply_bytes(
        neuron_factory, pooled_dir, gateway_factory):
    from cortex.gateway.config import ModelEntry

    n = neuron_factory(models_dir=str(pooled_dir))
    n.load("file:tiny-mean")
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-mean")], max_reply_bytes=20_000)
    ok = gw.post("/v1/embeddings", {"model": "tiny-mean", "input": ["Hello"] * 2})
    assert ok.status_code == 200 and len(ok.content) < 20_000
    r = gw.post("/v1/embeddings", {"model": "tiny-mean", "input": ["Hello"] * 100})
    e = err(r, 502, "upstream_read_error")
    assert "20000" in e["message"]
