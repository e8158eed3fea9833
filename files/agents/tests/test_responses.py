"""OpenAI's Responses API through the real gateway and real neurons, with the official SDK."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest
import requests

from cortex.gateway.config import EntitlementsSection, KeyEntry, Limit, ModelEntry, Window
from cortex.gateway.responses import reply, translate
from cortex.testing.agent_model import build_agent_model
from cortex.testing.model_sets import ModelSet, build_models
from cortex.testing.ports import free_port
from cortex.testing.served import Served
from cortex.testing.sse import named_events
from cortex.testing.tiny_gguf import EOS, SCRIPT_HELLO, build_tiny_gguf, script_text
from cortex.testing.waiting import wait_for

HELLO = script_text(SCRIPT_HELLO)
CODEX = json.loads((Path(__file__).parent / "data" / "codex_responses_request.json")
                   .read_text())
TERMINAL = ("response.completed", "response.incomplete", "response.failed")

# A ChatML template that renders tools and tool calls. The scripted model's next token
# depends on the prompt's last token only, so after a tool result the template ends with
# a marker (<|answer|>) that starts the model's worded answer.
AGENT_TEMPLATE = (
    "{% if messages[0].role == 'system' or tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}{% endif %}"
    "{% if tools %}\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "</tools>{% endif %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}{% if m.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{{ {'name': c.function.name, "
    "'arguments': c.function.arguments} | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif not loop.first or m.role != 'system' %}<|im_start|>{{ m.role }}\n"
    "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if messages[-1].role == 'tool' %}<|answer|>{% endif %}{% endif %}"
)
# Thinking, a few words, then a call to a function of Codex's `multi_agent_v1` namespace
# (which the gateway offers flattened); after a tool result, a worded answer.
AGENT_SCRIPT = [
    "<think>", "\nPlan", "▁a", "▁call.\n", "</think>", "\n\nOn", "▁it.", "<tool_call>", "\n{",
    '"name":', '▁"multi_agent_v1', '__spawn_agent",', '▁"arguments":', '▁{"task":',
    '▁"lint"}}\n', "</tool_call>", EOS, "<|answer|>", "Lint", "▁is", "▁clean.", EOS,
]
ANSWER = "Lint is clean."
SPAWN = next(t for t in CODEX["tools"] if t["type"] == "namespace")
MODELS = ["tiny-hello", "tiny-think", "tiny-loop", "tiny-agent"]


@pytest.fixture(scope="module")
def agent_dir(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = build_models(tmp_path_factory.mktemp("responses-models"), ModelSet(base=models_dir))
    build_agent_model(d, json.dumps(CODEX), script=AGENT_SCRIPT, chat_template=AGENT_TEMPLATE)
    return d


@pytest.fixture
def neuron(neuron_factory, agent_dir):
    return neuron_factory(models_dir=str(agent_dir), n_ctx=16384)


@pytest.fixture
def gw(neuron, gateway_factory):
    return gateway_factory({"n1": neuron}, [ModelEntry(id=m) for m in MODELS],
                           aliases={"file:smollm2": "tiny-agent"})


@pytest.fixture
def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="any", max_retries=0)


def neuron_count(neuron, body: dict) -> int:
    """The neuron's own count for the prompt a Responses body becomes."""
    req = translate.to_chat(body).chat
    r = neuron.post("/tokenize", dict(req, model=f"file:{req['model']}"))
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def sse_events(resp: requests.Response) -> list[tuple[str, dict]]:
    events = named_events(resp)
    assert "[DONE]" not in [data for _, data in events]  # Responses streams end without it
    return events


def check_stream(events: list[tuple[str, dict]]) -> dict:
    """The invariants of every Responses stream; returns the terminal response."""
    assert all(name == data["type"] for name, data in events)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert [n for n, _ in events[:2]] == ["response.created", "response.in_progress"]
    assert [n for n, _ in events if n in TERMINAL] == [events[-1][0]]
    done = [d["item"] for n, d in events if n == "response.output_item.done"]
    final = events[-1][1]["response"]
    if final["status"] != "failed":
        assert final["output"] == done
    return final


# -- replies -----------------------------------------------------------------------------
def test_create(client, neuron):
    raw = client.responses.with_raw_response.create(model="tiny-hello", input="Hi",
                                                    instructions="Be brief.")
    assert raw.headers["X-Cortex-Node"] == "n1"
    r = raw.parse()
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.model == "tiny-hello" and r.output_text == HELLO
    assert [(o.type, o.role, o.status) for o in r.output] == [("message", "assistant",
                                                               "completed")]
    count = neuron_count(neuron, {"model": "tiny-hello", "input": "Hi",
                                  "instructions": "Be brief."})
    assert r.usage.input_tokens == count > 0
    assert r.usage.output_tokens == len(SCRIPT_HELLO) - 1
    assert r.usage.total_tokens == count + len(SCRIPT_HELLO) - 1
    assert r.usage.input_tokens_details.cached_tokens >= 0


def test_cached_tokens_reported(client):
    long = "Hi " * 200  # the same prompt twice: the neuron reuses what it computed
    client.responses.create(model="tiny-hello", input=long)
    again = client.responses.create(model="tiny-hello", input=long)
    assert again.usage.input_tokens_details.cached_tokens > again.usage.input_tokens // 2


def test_stream_helper_and_final_response(client, neuron):
    with client.responses.stream(model="tiny-hello", input="Hi") as s:
        kinds, text = [], ""
        for event in s:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = s.get_final_response()
    assert text == HELLO and final.output_text == HELLO and final.status == "completed"
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed" and "response.output_item.done" in kinds
    assert final.usage.input_tokens == neuron_count(neuron, {"model": "tiny-hello",
                                                             "input": "Hi"})
    assert final.usage.output_tokens == len(SCRIPT_HELLO) - 1


def test_stream_event_sequence(gw):
    r = gw.post("/v1/responses", {"model": "tiny-hello", "input": "Hi", "stream": True},
                stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(r)
    final = check_stream(events)
    assert [n for n, _ in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * (
            len(events) - 8), "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    assert final["output"][0]["content"][0]["text"] == HELLO


def test_max_output_tokens_is_incomplete(client):
    r = client.responses.create(model="tiny-loop", input="Hi", max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5 and r.output[0].status == "incomplete"
    stream = client.responses.create(model="tiny-loop", input="Hi", max_output_tokens=4,
                                     stream=True)
    events = list(stream)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.usage.output_tokens == 4


def test_reasoning_items(client):
    r = client.responses.create(model="tiny-think", input="Hi", reasoning={"effort": "high"})
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == "\nThe user says hi.\n"
    assert r.output_text == "Hi there!"
    with client.responses.stream(model="tiny-think", input="Hi") as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    assert "response.reasoning_text.delta" in kinds and "response.output_text.delta" in kinds
    assert [o.type for o in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "\nThe user says hi.\n"


def test_thinking_effort_reaches_the_chat_template(neuron_factory, gateway_factory, tmp_path):
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                "{% endfor %}<|im_start|>assistant\n"
                "{% if enable_thinking %}<think>{% endif %}")
    (tmp_path / "m").mkdir()
    build_tiny_gguf(tmp_path / "m" / "tiny-flag.gguf", chat_template=template, name="tiny-flag")
    gw = gateway_factory({"n1": neuron_factory(models_dir=str(tmp_path / "m"))},
                         [ModelEntry(id="tiny-flag")])
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    # The template opened <think>, so the whole answer is the model's reasoning.
    r = client.responses.create(model="tiny-flag", input="Hi", reasoning={"effort": "low"})
    assert [(o.type, o.content[0].text) for o in r.output] == [("reasoning", HELLO)]
    r = client.responses.create(model="tiny-flag", input="Hi", reasoning={"effort": "none"})
    assert r.output_text == HELLO and [o.type for o in r.output] == ["message"]


def test_input_tokens_is_the_neurons_count(client, neuron):
    body = {"model": "tiny-agent", "instructions": "Be brief.", "tools": [SPAWN],
            "input": "Lint the repo with a sub-agent."}
    # A count never loads a model: before any request there is nothing to count with.
    with pytest.raises(openai.APIStatusError) as cold:
        client.responses.input_tokens.count(**body)
    assert cold.value.status_code == 503
    assert cold.value.body["code"] == "model_not_loaded"
    created = client.responses.create(**body)
    counted = client.responses.input_tokens.count(**body)
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == neuron_count(neuron, body) > 100  # the tools are in it
    assert created.usage.input_tokens == counted.input_tokens


class Tap:
    """A real neuron app that also keeps the chat bodies it was sent."""

    def __init__(self, app) -> None:
        self.app, self.extensions, self.bodies = app, app.extensions, []

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/v1/chat/completions":
            raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            self.bodies.append(json.loads(raw))
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(raw), str(len(raw))
        return self.app(environ, start_response)


def test_structured_output_reaches_the_neuron(agent_dir, tmp_path, gateway_factory):
    from cortex.neuron.app import create_app
    from cortex.neuron.config import NeuronConfig

    tap = Tap(create_app(NeuronConfig(models_dir=str(agent_dir), n_threads=2,
                                      cache_dir=str(tmp_path / "cache"))))
    served = Served(tap)
    try:
        gw = gateway_factory({"n1": served}, [ModelEntry(id="tiny-hello")])
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        schema = {"type": "object", "properties": {"city": {"type": "string"}},
                  "required": ["city"], "additionalProperties": False}
        client.responses.create(model="tiny-hello", input="Where?", text={"format": {
            "type": "json_schema", "name": "place", "schema": schema, "strict": True}})
        client.responses.create(model="tiny-hello", input="Where?",
                                text={"format": {"type": "json_object"}})
    finally:
        served.close()
    assert [b.get("response_format") for b in tap.bodies] == [
        {"type": "json_schema", "json_schema": {"name": "place", "schema": schema,
                                                "strict": True}},
        {"type": "json_object"}]


# -- tools -------------------------------------------------------------------------------
def test_function_call_round_trip(client):
    ask = [{"role": "user", "content": "Lint the repo with a sub-agent."}]
    tools = [SPAWN, {"type": "web_search"}]
    r = client.responses.create(model="tiny-agent", input=ask, tools=tools)
    assert [o.type for o in r.output] == ["reasoning", "message", "function_call"]
    call = r.output[2]
    assert (call.namespace, call.name) == ("multi_agent_v1", "spawn_agent")
    assert json.loads(call.arguments) == {"task": "lint"} and call.call_id
    assert r.output_text == "On it." and r.status == "completed"
    # the SDK's own items go back as the next turn's input, with the tool's output
    history = [*ask, *[o.model_dump(exclude_none=True) for o in r.output],
               {"type": "function_call_output", "call_id": call.call_id,
                "output": "agent lint-1 reports: no problems"}]
    answer = client.responses.create(model="tiny-agent", input=history, tools=tools)
    assert answer.output_text == ANSWER and [o.type for o in answer.output] == ["message"]
    with client.responses.stream(model="tiny-agent", input=history, tools=tools) as s:
        assert s.get_final_response().output_text == ANSWER


def test_function_call_streamed(client):
    with client.responses.stream(model="tiny-agent", tools=[SPAWN],
                                 input="Lint the repo with a sub-agent.") as s:
        events = list(s)
        final = s.get_final_response()
    call = final.output[-1]
    assert (call.type, call.namespace, call.name) == ("function_call", "multi_agent_v1",
                                                      "spawn_agent")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [json.loads(e.arguments) for e in done] == [{"task": "lint"}]
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == ["reasoning", "message", "function_call"]


def test_codex_request_streamed_as_recorded(gw, neuron):
    """Codex CLI 0.171's own request, whole: developer messages, a namespace tool, a
    hosted web_search tool, include, store: false, prompt_cache_key, client_metadata."""
    headers = {"Authorization": "Bearer sk-any", "originator": "codex_exec",
               "accept": "text/event-stream", "session-id": "01a23452"}
    r = requests.post(gw.url + "/v1/responses", json=CODEX, headers=headers, stream=True,
                      timeout=120)
    assert r.status_code == 200, r.text
    events = sse_events(r)
    final = check_stream(events)
    assert final["status"] == "completed" and final["model"] == CODEX["model"]
    assert final["store"] is False
    items = final["output"]
    assert [i["type"] for i in items] == ["reasoning", "message", "function_call"]
    assert (items[2]["namespace"], items[2]["name"]) == ("multi_agent_v1", "spawn_agent")
    prompt = neuron_count(neuron, dict(CODEX, model="tiny-agent"))
    assert final["usage"]["input_tokens"] == prompt > 5000


# -- errors ------------------------------------------------------------------------------
def error_of(exc: openai.APIStatusError) -> dict:
    assert set(exc.body) >= {"message", "type", "code", "param"}  # the SDK unwraps "error"
    return exc.body


def test_invalid_requests_are_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.post("/responses", cast_to=object, body={"model": "tiny-hello"})
    assert error_of(exc.value)["param"] == "input"
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="tiny-hello", input="Hi", previous_response_id="resp_1")
    err = error_of(exc.value)
    assert err["param"] == "previous_response_id" and "stateless" in err["message"]
    assert err["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as exc:  # to be fetched later: never kept
        client.responses.create(model="tiny-hello", input="Hi", store=True)
    err = error_of(exc.value)
    assert err["param"] == "store" and "store: false" in err["message"]
    with pytest.raises(openai.BadRequestError) as exc:  # the neuron's 422 is a 400 here
        client.responses.create(model="tiny-hello", input="Hi", temperature=7)
    assert error_of(exc.value)["param"] == "temperature"
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    with pytest.raises(openai.BadRequestError) as exc:  # translated, then refused: text only
        client.responses.create(model="tiny-hello", input=[{"role": "user", "content": [
            {"type": "input_text", "text": "What is it?"}, image]}])
    assert "text only" in error_of(exc.value)["message"]
    with pytest.raises(openai.BadRequestError) as exc:  # not JSON
        client.post("/responses", cast_to=object, body="nope",
                    options={"headers": {"Content-Type": "text/plain"}})
    assert error_of(exc.value)["type"] == "invalid_request_error"


def test_stored_responses_are_not_found(client, gw):
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.retrieve("resp_123")
    assert error_of(exc.value)["code"] == "response_not_found"
    r = gw.get("/v1/responses")  # the wrong method, in the same envelope
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_context_too_long_is_400(neuron, gateway_factory):
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello", limit=Limit(context=10))])
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="tiny-hello", input="x" * 400)
    assert error_of(exc.value)["code"] == "context_length_exceeded"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.responses.create(model="gpt-9", input="Hi")
    assert error_of(exc.value)["code"] == "model_not_found"


def test_auth_is_401(neuron, gateway_factory, tmp_path):
    keys = EntitlementsSection(require_auth=True, store=f"sqlite://{tmp_path}/s.db",
                               keys=[KeyEntry(key="sk-good", account_id="acme")])
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello")], entitlements=keys)
    good = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-good", max_retries=0)
    assert good.responses.create(model="tiny-hello", input="Hi").output_text == HELLO
    wrong = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-bad", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        wrong.responses.create(model="tiny-hello", input="Hi")
    assert error_of(exc.value)["code"] == "invalid_api_key"


def test_rate_limited_is_429(neuron, gateway_factory, tmp_path):
    keys = EntitlementsSection(require_auth=True, store=f"sqlite://{tmp_path}/s.db", keys=[
        KeyEntry(key="sk-capped", account_id="acme", hard_cap=10,
                 window=Window(kind="rolling", seconds=600))])
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello")], entitlements=keys)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-capped", max_retries=0)
    client.responses.create(model="tiny-hello", input="Hi")  # spends > 10
    with pytest.raises(openai.RateLimitError) as exc:
        client.responses.create(model="tiny-hello", input="Hi")
    assert error_of(exc.value)["code"] == "rate_limit_exceeded"
    assert int(exc.value.response.headers["Retry-After"]) > 0


def test_body_too_large_is_413(neuron, gateway_factory):
    gw = gateway_factory({"n1": neuron}, [ModelEntry(id="tiny-hello")], max_body_bytes=2000)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as exc:
        client.responses.create(model="tiny-hello", input="x" * 5000)
    assert exc.value.status_code == 413
    assert error_of(exc.value)["code"] == "request_too_large"


def test_no_healthy_neuron_is_503(gateway_factory):
    down = SimpleNamespace(url=f"http://127.0.0.1:{free_port()}")
    gw = gateway_factory({"n1": down}, [ModelEntry(id="tiny-hello")])
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as exc:
        client.responses.create(model="tiny-hello", input="Hi")
    assert exc.value.status_code == 503
    assert error_of(exc.value)["code"] == "service_unavailable"
    assert exc.value.response.headers["Retry-After"] == "5"


def test_unreachable_neuron_is_502(neuron_process, gateway_factory):
    n = neuron_process('default_models = ["file:tiny-hello"]')
    # The fleet polls once and then not for an hour: it still thinks the neuron is up.
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")], poll_interval_secs=3600)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    n.crash()
    with pytest.raises(openai.InternalServerError) as exc:
        client.responses.create(model="tiny-hello", input="Hi")
    assert exc.value.status_code == 502
    assert error_of(exc.value)["code"] == "upstream_connection_error"


def test_unexpected_failure_is_500(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(reply, "to_response", broken)
    with pytest.raises(openai.InternalServerError) as exc:
        client.responses.create(model="tiny-hello", input="Hi")
    assert exc.value.status_code == 500
    assert error_of(exc.value)["message"] == "internal error: RuntimeError"


def test_neuron_dying_mid_stream_is_response_failed(neuron_process, gateway_factory):
    n = neuron_process('n_ctx = 65536\ndefault_models = ["file:tiny-long"]')
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-long")])
    r = requests.post(gw.url + "/v1/responses", json={
        "model": "tiny-long", "input": "Hi", "max_output_tokens": 60000, "stream": True},
        stream=True, timeout=120)
    events, name = [], None
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            if len(events) == 8:
                n.crash()  # the neuron dies mid-stream
    final = check_stream(events)
    assert events[-1][0] == "response.failed" and final["status"] == "failed"
    assert final["error"]["code"] == "server_error"
    assert "stream broke off" in final["error"]["message"]
    assert "response.output_text.delta" in [n for n, _ in events]


def test_under_gunicorn_gevent_with_spend_metrics(neuron_process, gateway_process):
    """`cortex serve` as deployed: gevent workers stream the events; spend is counted."""
    n = neuron_process()
    gw = gateway_process({"n1": n}, {"models": [{"id": "tiny-hello"}]},
                         gateway={"poll_interval_secs": 0.5})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    with client.responses.stream(model="tiny-hello", input="Hi") as s:
        final = s.get_final_response()
    assert final.output_text == HELLO
    r = client.responses.create(model="tiny-hello", input="Hi")
    assert r.output_text == HELLO
    labels = '{model="tiny-hello",node="n1"}'
    want = [f"cortex_requests_total{labels} 2.0",
            f"cortex_prompt_tokens_total{labels} {2 * r.usage.input_tokens}.0",
            f"cortex_completion_tokens_total{labels} {2 * r.usage.output_tokens}.0"]
    # A stream is accounted for once its last event is out.
    wait_for(lambda: all(line in gw.metrics() for line in want), "the spend in the metrics",
             10)


# -- a real model ------------------------------------------------------------------------
@pytest.mark.smollm2
def test_smollm2_answers_paris(smollm2_file, neuron_factory, gateway_factory, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "smollm2.gguf").symlink_to(smollm2_file)
    n = neuron_factory(models_dir=str(tmp_path / "m"), n_ctx=2048)
    gw = gateway_factory({"n1": n}, [ModelEntry(id="smollm2")],
                         aliases={"file:smollm2": "smollm2"})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    r = client.responses.create(model="smollm2", instructions="Answer in English.",
                                input="What is the capital of France?", temperature=0,
                                max_output_tokens=40)
    assert "Paris" in r.output_text and r.status in ("completed", "incomplete")
    # A Codex-shaped request, cut to fit the context: developer messages, Codex's
    # namespace and hosted tools, its bookkeeping fields; streamed.
    body = dict(CODEX, temperature=0, max_output_tokens=60, tools=[
        dict(SPAWN, tools=SPAWN["tools"][:1]), {"type": "web_search"}], input=[
        {"type": "message", "role": "developer", "content": [
            {"type": "input_text", "text": "You are a helpful assistant. Answer briefly."}]},
        *CODEX["input"][3:]])
    r = requests.post(gw.url + "/v1/responses", json=body, stream=True, timeout=120)
    assert r.status_code == 200, r.text
    final = check_stream(sse_events(r))
    assert final["status"] in ("completed", "incomplete") and final["output"]
    assert final["usage"]["output_tokens"] > 0
