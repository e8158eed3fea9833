"""The Responses API translation: requests to chat bodies, chat replies and chunks to
responses and events, checked against the official SDK's own types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from cortex.core.errors import ApiError, BadRequest
from cortex.gateway.responses import errors, reply, translate
from cortex.gateway.responses.stream import KEEPALIVE, Converter

# What Codex CLI 0.171 sent (`codex exec`), recorded as is.
CODEX = Path(__file__).parent / "data" / "codex_responses_request.json"
EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
SPAWN = {"type": "namespace", "name": "agents", "description": "Sub-agents.",
         "tools": [{"type": "function", "name": "spawn", "parameters": {
             "type": "object", "properties": {"task": {"type": "string"}}}}]}


def chat(body: dict) -> dict:
    return translate.to_chat({"model": "m", **body}).chat


def refused(body: dict) -> BadRequest:
    with pytest.raises(BadRequest) as exc:
        translate.to_chat(body)
    return exc.value


# -- requests ----------------------------------------------------------------------------
def test_string_input_and_instructions():
    out = chat({"input": "Hi", "instructions": "Be brief.", "max_output_tokens": 9,
                "temperature": 0.5, "top_p": 0.9})
    assert out == {"model": "m", "max_tokens": 9, "temperature": 0.5, "top_p": 0.9,
                   "messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi"}]}


def test_items_become_chat_messages():
    out = chat({"instructions": "Top.", "input": [
        {"type": "message", "role": "developer", "content": [
            {"type": "input_text", "text": "Dev one."}]},
        {"role": "system", "content": "Sys two."},  # an easy message: no type
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Look:"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "S"}],
         "content": [{"type": "reasoning_text", "text": "Thought."}],
         "encrypted_content": "opaque"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "spawn", "namespace": "agents",
         "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": [
            {"type": "input_text", "text": "spawned"},
            {"type": "input_image", "image_url": "https://x/y.png"}]},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},  # hosted: dropped
        {"type": "message", "role": "developer", "content": "Later rule."},
        {"type": "message", "role": "user", "content": "Thanks"},
    ]})["messages"]
    assert out == [
        {"role": "system", "content": "Top.\n\nDev one.\n\nSys two."},
        {"role": "user", "content": [
            {"type": "text", "text": "Look:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                "detail": "low"}}]},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Thought.",
         "tool_calls": [
             {"id": "c1", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
             {"id": "c2", "type": "function",
              "function": {"name": "agents__spawn", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "spawned"},
        {"role": "user", "content": [{"type": "image_url",
                                      "image_url": {"url": "https://x/y.png"}}]},
        {"role": "system", "content": "Later rule."},
        {"role": "user", "content": "Thanks"},
    ]


def test_tools_namespaces_and_hosted_tools():
    plan = translate.to_chat({"model": "m", "input": "Hi", "tool_choice": "required",
                              "parallel_tool_calls": False,
                              "tools": [WEATHER, SPAWN, {"type": "web_search"},
                                        {"type": "custom", "name": "apply_patch"}]})
    assert [t["function"]["name"] for t in plan.chat["tools"]] == ["get_weather",
                                                                    "agents__spawn"]
    assert plan.chat["tools"][0]["function"]["parameters"] == WEATHER["parameters"]
    assert (plan.chat["tool_choice"], plan.chat["parallel_tool_calls"]) == ("required", False)
    assert plan.names == {"agents__spawn": ("agents", "spawn")}
    # only hosted tools: nothing to offer, so no tool settings at all
    assert chat({"input": "Hi", "tools": [{"type": "web_search"}], "tool_choice": "auto"}) \
        == {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def test_tool_choice_forms():
    def choice(c, tools=(WEATHER, SPAWN)):
        return chat({"input": "Hi", "tools": list(tools), "tool_choice": c})

    assert choice({"type": "function", "name": "get_weather"})["tool_choice"] == {
        "type": "function", "function": {"name": "get_weather"}}
    assert choice({"type": "function", "name": "spawn", "namespace": "agents"})[
        "tool_choice"] == {"type": "function", "function": {"name": "agents__spawn"}}
    allowed = choice({"type": "allowed_tools", "mode": "required",
                      "tools": [{"type": "function", "name": "spawn"}]})
    assert allowed["tool_choice"] == "required"
    assert [t["function"]["name"] for t in allowed["tools"]] == ["agents__spawn"]
    assert "tools" not in choice("none")  # the model answers in words
    assert choice({"type": "web_search_preview"})["tool_choice"] == "auto"
    err = refused({"model": "m", "input": "Hi", "tools": [WEATHER],
                   "tool_choice": {"type": "function", "name": "nope"}})
    assert err.param == "tool_choice.name" and "nope" in err.message


def test_text_format_reasoning_and_stream():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = chat({"input": "Hi", "stream": True, "reasoning": {"effort": "high"},
                "text": {"format": {"type": "json_schema", "name": "A", "schema": schema,
                                    "strict": True}, "verbosity": "low"}})
    assert out["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "A", "schema": schema, "strict": True}}
    assert out["enable_thinking"] is True
    assert (out["stream"], out["stream_options"]) == (True, {"include_usage": True})
    assert chat({"input": "Hi", "text": {"format": {"type": "json_object"}}})[
        "response_format"] == {"type": "json_object"}
    assert "response_format" not in chat({"input": "Hi", "text": {"format": {"type": "text"}}})
    for effort, thinking in (("none", False), ("minimal", False), ("low", True)):
        assert chat({"input": "Hi", "reasoning": {"effort": effort}})[
            "enable_thinking"] is thinking
    assert "enable_thinking" not in chat({"input": "Hi", "reasoning": {"summary": "auto"}})


def test_accepted_and_ignored_fields():
    out = chat({"input": "Hi", "store": False, "include": ["reasoning.encrypted_content"],
                "prompt_cache_key": "k", "client_metadata": {"a": "b"}, "metadata": {"x": "y"},
                "user": "u", "safety_identifier": "s", "truncation": "auto",
                "service_tier": "auto", "top_logprobs": 2, "max_tool_calls": 3,
                "stream_options": {"include_obfuscation": False}, "previous_response_id": None})
    # (the session's keys go on: the gateway's affinity reads them, the neuron ignores them)
    assert out == {"model": "m", "messages": [{"role": "user", "content": "Hi"}],
                   "prompt_cache_key": "k", "user": "u"}


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "Hi"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 5}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": "Hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "m", "input": "Hi", "store": True}, "store"),
    ({"model": "m", "input": "Hi", "store": "yes"}, "store"),
    ({"model": "m", "input": "Hi", "conversation": "conv_1"}, "conversation"),
    ({"model": "m", "input": "Hi", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"model": "m", "input": "Hi", "background": True}, "background"),
    ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"model": "m", "input": [{"type": "telepathy"}]}, "input[0].type"),
    ({"model": "m", "input": [{"role": "robot", "content": "Hi"}]}, "input[0].role"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file"}]}]},
     "input[0].content[0].type"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0].call_id"),
    ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]},
     "input[0].output"),
    ({"model": "m", "input": "Hi", "instructions": 3}, "instructions"),
    ({"model": "m", "input": "Hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": "Hi", "tools": {"a": 1}}, "tools"),
    ({"model": "m", "input": "Hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "m", "input": "Hi", "tools": [{"type": "function", "name": "f",
                                              "parameters": []}]}, "tools[0].parameters"),
    ({"model": "m", "input": "Hi", "tool_choice": 7}, "tool_choice"),
    ({"model": "m", "input": "Hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"model": "m", "input": "Hi", "text": {"format": {"type": "json_schema", "name": "A"}}},
     "text.format.schema"),
    ({"model": "m", "input": "Hi", "reasoning": {"effort": "max"}}, "reasoning.effort"),
    ({"model": "m", "input": "Hi", "stream": "yes"}, "stream"),
])
def test_bad_input_names_the_field(body, param):
    err = refused(body)
    assert err.param == param and err.status == 400 and err.message.startswith(param)
    assert errors.envelope(err)["error"]["param"] == param


def test_codex_request_accepted_as_is():
    body = json.loads(CODEX.read_text())
    plan = translate.to_chat(body)
    msgs = plan.chat["messages"]
    # both developer messages lead as one system prompt; the two user turns follow
    assert [m["role"] for m in msgs] == ["system", "user", "user"]
    assert msgs[0]["content"].startswith("You are a coding agent running in the Codex CLI")
    assert msgs[-1]["content"] == "What is the capital of France?"
    names = [t["function"]["name"] for t in plan.chat["tools"]]
    functions = [t["name"] for t in body["tools"] if t["type"] == "function"]
    nested = next(t for t in body["tools"] if t["type"] == "namespace")
    assert names == [*functions[:4], *(f"{nested['name']}__{t['name']}"
                                       for t in nested["tools"]), *functions[4:]]
    assert all(plan.names[n] == (nested["name"], n.split("__")[1]) for n in names if "__" in n)
    assert plan.chat["stream"] is True and plan.chat["parallel_tool_calls"] is True
    assert "enable_thinking" not in plan.chat  # Codex asked for a summary, not an effort


# -- replies -----------------------------------------------------------------------------
def plan_for(**body) -> translate.Plan:
    return translate.to_chat({"model": "pub", "input": "Hi", **body})


def completion(message: dict, finish: str = "stop", cached: int = 3) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
            "model": "file:x", "choices": [{"index": 0, "message": message,
                                            "finish_reason": finish, "stop_reason": None}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27,
                      "prompt_tokens_details": {"cached_tokens": cached},
                      "completion_tokens_details": {"reasoning_tokens": 2}}}


def test_reply_with_reasoning_text_and_calls():
    plan = plan_for(tools=[WEATHER, SPAWN])
    done = completion({"role": "assistant", "content": "On it.\n\n", "reasoning_content": "Hmm",
                       "tool_calls": [
                           {"id": "call_a", "type": "function", "function": {
                               "name": "get_weather", "arguments": '{"city":"Paris"}'}},
                           {"id": "call_b", "type": "function", "function": {
                               "name": "agents__spawn", "arguments": {"task": "x"}}}]},
                       finish="tool_calls")
    parsed = Response.model_validate(reply.to_response(done, plan))  # the SDK's type, strictly
    assert parsed.id.startswith("resp_") and parsed.object == "response"
    assert (parsed.status, parsed.model, parsed.store) == ("completed", "pub", False)
    assert [o.type for o in parsed.output] == ["reasoning", "message", "function_call",
                                               "function_call"]
    assert parsed.output[0].content[0].text == "Hmm" and parsed.output[0].summary == []
    assert parsed.output_text == "On it."
    a, b = parsed.output[2], parsed.output[3]
    assert (a.call_id, a.name, a.namespace, a.arguments) == ("call_a", "get_weather", None,
                                                             '{"city":"Paris"}')
    assert (b.call_id, b.name, b.namespace, json.loads(b.arguments)) == (
        "call_b", "spawn", "agents", {"task": "x"})
    u = parsed.usage
    assert (u.input_tokens, u.input_tokens_details.cached_tokens, u.output_tokens,
            u.output_tokens_details.reasoning_tokens, u.total_tokens) == (20, 3, 7, 2, 27)


def test_reply_cut_at_max_tokens_is_incomplete():
    r = reply.to_response(completion({"role": "assistant", "content": "la di"}, "length"),
                              plan_for(max_output_tokens=2))
    parsed = Response.model_validate(r)
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.output[0].status == "incomplete" and parsed.max_output_tokens == 2


# -- streaming ---------------------------------------------------------------------------
def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None
          ) -> dict:
    c = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "x",
         "choices": [] if delta is None else [{"index": 0, "delta": delta,
                                               "finish_reason": finish}]}
    if usage:
        c["usage"] = usage
    return c


USAGE = {"prompt_tokens": 11, "completion_tokens": 5,
         "prompt_tokens_details": {"cached_tokens": 4}}


def run(plan: translate.Plan, chunks) -> list[dict]:
    events = [e for e in Converter(plan).dicts(iter(chunks)) if e is not None]
    for e in events:
        EVENT.validate_python(e)  # every event is one the SDK knows, field for field
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    terminal = [e for e in events if e["type"] in ("response.completed",
                                                   "response.incomplete", "response.failed")]
    assert terminal == [events[-1]]
    return events


def test_stream_text_events_in_order():
    events = run(plan_for(stream=True), [
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
        chunk({"content": "lo\n"}), chunk({"content": "there"}), chunk({}, "stop"),
        chunk(usage=USAGE)])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    # trailing whitespace waits for the text after it (it may come before a tool call)
    assert [e["delta"] for e in events if e["type"].endswith("text.delta")] == [
        "Hel", "lo", "\nthere"]
    done = events[-2]["item"]
    assert done["content"][0]["text"] == "Hello\nthere" and done["status"] == "completed"
    final = events[-1]["response"]
    assert final["output"] == [done] and final["status"] == "completed"
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 4
    assert final["id"] == events[0]["response"]["id"]


def test_stream_reasoning_and_calls_neuron_and_fragment_shapes():
    events = run(plan_for(stream=True, tools=[WEATHER, SPAWN]), [
        chunk({"reasoning_content": "Think"}), chunk({"reasoning_content": "ing"}),
        chunk({"content": "\n\nOn it."}), chunk({"content": "\n"}),
        # the neuron sends a call whole; OpenAI-style servers send it in fragments
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "agents__spawn", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"task"'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ': "x"}'}}]}),
        chunk({}, "tool_calls"), chunk(usage=USAGE)])
    items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [i["type"] for i in items] == ["reasoning", "message", "function_call",
                                          "function_call"]
    assert items[0]["content"] == [{"type": "reasoning_text", "text": "Thinking"}]
    assert items[1]["content"][0]["text"] == "\n\nOn it."  # the newline before the call: gone
    assert (items[2]["name"], items[2]["arguments"]) == ("get_weather", '{"city": "Paris"}')
    assert (items[3]["namespace"], items[3]["name"], items[3]["arguments"]) == (
        "agents", "spawn", '{"task": "x"}')
    arg_deltas = [e["delta"] for e in events if e["type"].endswith("arguments.delta")
                  and e["item_id"] == items[3]["id"]]
    assert arg_deltas == ['{"task"', ': "x"}']
    assert events[-1]["response"]["output"] == items
    # the same reply, whole, makes the same items
    whole = reply.to_response(completion({
        "role": "assistant", "content": "\n\nOn it.\n", "reasoning_content": "Thinking",
        "tool_calls": [
            {"id": "call_a", "function": {"name": "get_weather",
                                          "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "function": {"name": "agents__spawn",
                                          "arguments": '{"task": "x"}'}}]}, "tool_calls"),
        plan_for(tools=[WEATHER, SPAWN]))
    assert strip_ids(whole["output"]) == strip_ids(items)


def test_stream_cut_at_max_tokens_is_incomplete():
    events = run(plan_for(stream=True), [chunk({"content": "la"}), chunk({"content": " di"}),
                                         chunk({}, "length"), chunk(usage=USAGE)])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_stream_failures_end_in_response_failed():
    def dies():
        yield chunk({"content": "Hel"})
        raise ApiError("the neuron's stream broke off: reset", status=502,
                       code="upstream_stream_error")

    events = run(plan_for(stream=True), dies())
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert "broke off" in failed["error"]["message"]
    assert failed["output"][0]["status"] == "incomplete"  # what got out, marked so
    assert not [e for e in events if e["type"] == "response.output_item.done"]
    # the neuron gave up and said why: a full queue is worth a retry
    events = run(plan_for(stream=True), [chunk({"content": "x"}), {"error": {
        "message": "queue full", "code": "rate_limit_exceeded"}}])
    assert events[-1]["response"]["error"]["code"] == "rate_limit_exceeded"
    events = run(plan_for(stream=True), [])  # nothing at all came
    assert events[-1]["type"] == "response.failed"


def test_stream_bytes_are_sse_with_keepalives():
    out = b"".join(Converter(plan_for(stream=True)).events(iter(
        [None, chunk({"content": "Hi"}), chunk({}, "stop")])))
    blocks = out.split(b"\n\n")[:-1]
    assert KEEPALIVE.rstrip() in blocks and b"[DONE]" not in out
    for block in blocks:
        if block.startswith(b":"):
            continue
        name, data = block.split(b"\n")
        assert name.startswith(b"event: ") and data.startswith(b"data: ")
        assert json.loads(data[6:])["type"] == name[7:].decode()


def test_stream_closes_upstream_when_client_leaves():
    closed = []

    def upstream():
        try:
            while True:
                yield chunk({"content": "la "})
        finally:
            closed.append(True)

    gen = upstream()
    events = Converter(plan_for(stream=True)).events(gen)
    for _ in range(6):
        next(events)
    events.close()
    assert closed == [True]


def strip_ids(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in i.items() if k != "id"} for i in items]


# -- properties --------------------------------------------------------------------------
pieces = st.lists(st.text(alphabet=st.sampled_from("ab \n{}\":é"), max_size=6), max_size=8)
calls = st.lists(st.tuples(st.sampled_from(["get_weather", "agents__spawn"]),
                           st.lists(st.text(alphabet="ab{}:\" ", max_size=5), max_size=3)),
                 max_size=3)


@settings(max_examples=150, deadline=None)
@given(thinking=pieces, text=pieces, tool_calls=calls,
       finish=st.sampled_from(["stop", "length"]))
def test_stream_and_whole_reply_agree(thinking, text, tool_calls, finish):
    """However a reply is cut into chunks, the stream's items are the whole reply's."""
    chunks = [chunk({"reasoning_content": t}) for t in thinking]
    chunks += [chunk({"content": t}) for t in text]
    whole_calls = []
    for n, (name, frags) in enumerate(tool_calls):
        chunks.append(chunk({"tool_calls": [{"index": n, "id": f"call_{n}",
                                             "function": {"name": name, "arguments": ""}}]}))
        chunks += [chunk({"tool_calls": [{"index": n, "function": {"arguments": f}}]})
                   for f in frags]
        whole_calls.append({"id": f"call_{n}", "function": {"name": name,
                                                            "arguments": "".join(frags)}})
    finish_reason = "tool_calls" if tool_calls and finish == "stop" else finish
    chunks += [chunk({}, finish_reason), chunk(usage=USAGE)]
    plan = plan_for(stream=True, tools=[WEATHER, SPAWN])
    events = run(plan, chunks)
    added = {e["item"]["id"] for e in events if e["type"] == "response.output_item.added"}
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [i["id"] for i in done] == sorted(added, key=[i["id"] for i in done].index)
    for e in events:  # every delta lands in an item that was added and is not yet done
        if "item_id" in e:
            assert e["item_id"] in added
    message = {"role": "assistant", "content": "".join(text) or None}
    if "".join(thinking):
        message["reasoning_content"] = "".join(thinking)
    if whole_calls:
        message["tool_calls"] = whole_calls
    whole = reply.to_response(completion(message, finish_reason), plan)
    got = strip_ids(events[-1]["response"]["output"])
    want = strip_ids(whole["output"])
    for item in want:  # an empty call streams as "{}", as a call's arguments must be JSON
        if item["type"] == "function_call" and not item["arguments"]:
            item["arguments"] = "{}"
    assert got == want
    assert events[-1]["response"]["status"] == whole["status"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "role", "content", "text", "name", "call_id", "output",
                         "arguments", "tools", "namespace", "image_url", "format", "schema",
                         "effort", "mode", "parameters", "summary"]), inner, max_size=4),
    max_leaves=12)
item_types = st.sampled_from(["message", "function_call", "function_call_output",
                              "reasoning", "input_text", "output_text", "input_image",
                              "function", "namespace", "json_schema", "allowed_tools",
                              "user", "assistant", "developer"])


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(
    st.sampled_from(["model", "input", "instructions", "tools", "tool_choice", "text",
                     "reasoning", "max_output_tokens", "stream", "store", "include"]),
    json_values | st.lists(st.dictionaries(st.sampled_from(["type", "role", "content",
                                                            "name", "call_id", "output"]),
                                           item_types | json_values, max_size=4),
                           max_size=3), max_size=6))
def test_any_body_is_translated_or_refused_by_field(body):
    """No request body breaks the translation: it is a chat body, or a 400 naming a field."""
    try:
        plan = translate.to_chat(body)
    except BadRequest as exc:
        assert exc.param and exc.message.startswith(exc.param)
        return
    assert plan.chat["messages"] and isinstance(plan.chat["model"], str)
    json.dumps(plan.chat)


words = st.text(alphabet=st.sampled_from("ab c\n"), min_size=1, max_size=8)


@st.composite
def conversations(draw) -> list[dict]:
    """A history as Codex sends it: user turns; model turns of reasoning, words and calls,
    each call answered by its output before the next user turn."""
    items: list[dict] = []
    for n in range(draw(st.integers(1, 4))):
        items.append({"type": "message", "role": draw(st.sampled_from(["user", "developer"])),
                      "content": [{"type": "input_text", "text": draw(words)}]})
        if draw(st.booleans()):
            items.append({"type": "reasoning", "id": f"rs_{n}", "summary": [],
                          "content": [{"type": "reasoning_text", "text": draw(words)}]})
        if draw(st.booleans()):
            items.append({"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": draw(words), "annotations": []}]})
        calls = [f"call_{n}_{k}" for k in range(draw(st.integers(0, 2)))]
        for call in calls:
            items.append({"type": "function_call", "call_id": call, "name": "get_weather",
                          "arguments": "{}"})
        for call in calls:
            items.append({"type": "function_call_output", "call_id": call,
                          "output": draw(words)})
    return items


@settings(max_examples=200, deadline=None)
@given(items=conversations())
def test_history_keeps_every_word_call_and_output_in_order(items):
    messages = chat({"input": items})["messages"]

    def text(i):
        return i["content"][0]["text"]

    def of(role):
        return [i for i in items if i.get("role") == role]

    lead = 0  # the developer messages before anything else form the system prompt
    while lead < len(items) and items[lead].get("role") in ("developer", None) \
            and items[lead]["type"] in ("message", "reasoning"):
        lead += 1
    leading = [text(i) for i in items[:lead] if i.get("role") == "developer"]
    later = [text(i) for i in items[lead:] if i.get("role") == "developer"]
    system = [m["content"] for m in messages if m["role"] == "system"]
    assert system == (["\n\n".join(leading)] if leading else []) + later
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        text(i) for i in of("user")]
    assert "".join(m["content"] or "" for m in messages if m["role"] == "assistant") == \
        "".join(text(i) for i in of("assistant"))
    calls_seen: set[str] = set()
    for m in messages:
        if m["role"] == "assistant":
            calls_seen |= {c["id"] for c in m.get("tool_calls") or []}
        if m["role"] == "tool":  # every output follows the call it answers
            assert m["tool_call_id"] in calls_seen
    assert calls_seen == {i["call_id"] for i in items if i["type"] == "function_call"}
    outputs = [i["output"] for i in items if i["type"] == "function_call_output"]
    assert [m["content"] for m in messages if m["role"] == "tool"] == outputs
    # a thought goes with the model's turn right after it, or nowhere
    followed = [text(i) for i, after in zip(items, [*items[1:], {}], strict=True)
                if i["type"] == "reasoning" and (after.get("type") == "function_call"
                                                 or after.get("role") == "assistant")]
    assert [m["reasoning_content"] for m in messages if "reasoning_content" in m] == followed
