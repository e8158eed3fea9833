"""Every Anthropic ↔ OpenAI mapping, both ways, without servers."""

from __future__ import annotations

import json

import pytest

from cortex.core.errors import ApiError, BadRequest
from cortex.gateway.anthropic import errors
from cortex.gateway.anthropic.stream import Converter
from cortex.gateway.anthropic.translate import stop_reason, to_anthropic, to_openai, tool_input

HI = [{"role": "user", "content": "Hi"}]


def req(**body) -> dict:
    return to_openai({"model": "m", "max_tokens": 16, "messages": HI} | body)


def rejects(match: str, **body) -> None:
    with pytest.raises(ApiError) as exc:
        to_openai({"model": "m", "max_tokens": 16, "messages": HI} | body)
    assert exc.value.status == 400 and match in exc.value.message


# -- request: top level ------------------------------------------------------------------
def test_minimal_request():
    assert req() == {"model": "m", "max_tokens": 16, "enable_thinking": False,
                     "messages": [{"role": "user", "content": "Hi"}]}


def test_model_and_max_tokens_are_required():
    with pytest.raises(ApiError, match="max_tokens: field required") as exc:
        to_openai({"model": "m", "messages": HI})
    assert exc.value.status == 400
    with pytest.raises(ApiError, match="model: field required"):
        to_openai({"max_tokens": 5, "messages": HI})
    rejects("max_tokens", max_tokens=0)
    rejects("max_tokens", max_tokens="5")
    rejects("max_tokens", max_tokens=True)
    # count_tokens bodies carry no max_tokens
    assert "max_tokens" not in to_openai({"model": "m", "messages": HI}, count_only=True)


def test_sampling_stop_sequences_metadata_stream():
    out = req(temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["\n\nHuman:", "END"],
              metadata={"user_id": "u-1"}, stream=True, service_tier="auto",
              cache_control={"type": "ephemeral"})
    assert (out["temperature"], out["top_p"], out["top_k"]) == (0.2, 0.9, 40)
    assert out["stop"] == ["\n\nHuman:", "END"]
    assert out["user"] == "u-1"
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert "service_tier" not in out and "cache_control" not in out
    rejects("stop_sequences", stop_sequences="END")
    assert "user" not in req(metadata={})


@pytest.mark.parametrize(("thinking", "enabled"), [
    ({"type": "enabled", "budget_tokens": 2048}, True), ({"type": "adaptive"}, True),
    ({"type": "disabled"}, False), (None, False)])
def test_thinking_asks_the_neuron_for_reasoning(thinking, enabled):
    assert req(thinking=thinking)["enable_thinking"] is enabled


# -- request: system and messages -------------------------------------------------------
def test_system_string_blocks_and_system_turns():
    assert req(system="Be brief.")["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [{"type": "text", "text": "You are a CLI.", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "Be brief."}]
    out = req(system=blocks, messages=[{"role": "system", "content": "Late rule."}, *HI])
    assert out["messages"] == [
        {"role": "system", "content": "You are a CLI.\n\nBe brief.\n\nLate rule."},
        {"role": "user", "content": "Hi"}]
    rejects("system[0]", system=[{"type": "image"}])
    rejects("system", system=5)
    assert req(system="")["messages"] == [{"role": "user", "content": "Hi"}]


def test_messages_must_be_a_list_of_user_and_assistant_turns():
    rejects("messages", messages=[])
    rejects("messages", messages="Hi")
    rejects("messages[0].role", messages=[{"role": "robot", "content": "Hi"}])
    rejects("messages[0].content", messages=[{"role": "user", "content": 5}])
    rejects("messages[0].content[0]", messages=[{"role": "user", "content": ["Hi"]}])


def test_user_blocks_text_images_documents():
    png = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                       "data": "AAAA"}}
    url = {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}}
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                          "data": "notes"}}
    text = {"type": "text", "text": "What are these?", "cache_control": {"type": "ephemeral"}}
    out = req(messages=[{"role": "user", "content": [png, url, doc, text]}])["messages"]
    assert out == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}},
        {"type": "text", "text": "notes"}, {"type": "text", "text": "What are these?"}]}]
    # text alone becomes one string, the blocks a paragraph apart
    two = [{"type": "text", "text": "<system-reminder>x</system-reminder>"},
           {"type": "text", "text": "Fix it."}]
    assert req(messages=[{"role": "user", "content": two}])["messages"][0]["content"] == (
        "<system-reminder>x</system-reminder>\n\nFix it.")
    rejects("source", messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f1"}}]}])
    rejects("'audio'", messages=[{"role": "user", "content": [{"type": "audio"}]}])


def test_tool_use_becomes_assistant_tool_calls():
    turn = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Look it up.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xyz"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
         "input": {"city": "Paris"}, "cache_control": {"type": "ephemeral"}},
        {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}},
        {"type": "web_search_tool_result", "tool_use_id": "srv_1", "content": []}]}
    (msg,) = req(messages=[*HI, turn])["messages"][1:]
    assert msg == {"role": "assistant", "content": "Checking.",
                   "reasoning_content": "Look it up.", "tool_calls": [
                       {"id": "toolu_1", "type": "function", "function": {
                           "name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    only_call = {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t2", "name": "now", "input": {}}]}
    (msg,) = req(messages=[*HI, only_call])["messages"][1:]
    assert msg["content"] is None and msg["tool_calls"][0]["function"]["arguments"] == "{}"
    assert req(messages=[*HI, {"role": "assistant", "content": "Sure."}])["messages"][1] == {
        "role": "assistant", "content": "Sure."}
    rejects("tool_use block needs", messages=[*HI, {"role": "assistant", "content": [
        {"type": "tool_use", "name": "x", "input": {}}]}])
    rejects("'image' blocks", messages=[*HI, {"role": "assistant", "content": [
        {"type": "image", "source": {}}]}])


def test_tool_results_become_tool_messages():
    results = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "21 C"},
        {"type": "tool_result", "tool_use_id": "t2", "content": [
            {"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]},
        {"type": "tool_result", "tool_use_id": "t3", "is_error": True,
         "content": "no such file"},
        {"type": "tool_result", "tool_use_id": "t4"},
        {"type": "tool_result", "tool_use_id": "t5", "content": [
            {"type": "text", "text": "a chart"},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/c.png"}}]},
        {"type": "text", "text": "Now summarise."}]}
    out = req(messages=[*HI, results])["messages"][1:]
    assert out == [
        {"role": "tool", "tool_call_id": "t1", "content": "21 C"},
        {"role": "tool", "tool_call_id": "t2", "content": "line 1\n\nline 2"},
        {"role": "tool", "tool_call_id": "t3", "content": "Error: no such file"},
        {"role": "tool", "tool_call_id": "t4", "content": ""},
        {"role": "tool", "tool_call_id": "t5", "content": "a chart"},
        # a tool message holds text only: the image follows, with the turn's own text
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x.test/c.png"}},
            {"type": "text", "text": "Now summarise."}]}]
    rejects("content", messages=[*HI, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": 5}]}])


def test_tools_and_tool_choice():
    tools = [{"name": "get_weather", "description": "Weather.", "cache_control": {"type": "x"},
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
             {"name": "now", "type": "custom", "input_schema": {"type": "object"}},
             {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
    out = req(tools=tools)
    assert out["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                          "parameters": tools[0]["input_schema"]}},
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]
    assert "tool_choice" not in out
    choices = {"auto": "auto", "any": "required", "none": "none"}
    for kind, openai in choices.items():
        assert req(tools=tools, tool_choice={"type": kind})["tool_choice"] == openai
    named = req(tools=tools, tool_choice={"type": "tool", "name": "now",
                                          "disable_parallel_tool_use": True})
    assert named["tool_choice"] == {"type": "function", "function": {"name": "now"}}
    assert named["parallel_tool_calls"] is False
    rejects("tool_choice", tools=tools, tool_choice={"type": "tool"})
    rejects("tool_choice", tools=tools, tool_choice="auto")
    rejects("input_schema", tools=[{"name": "x"}])
    rejects("tools[0]", tools=[{"input_schema": {}}])
    assert "tools" not in req(tools=[tools[2]])  # nothing left that a local model can call


# -- reply -------------------------------------------------------------------------------
def reply(message: dict, finish: str = "stop", matched: str | None = None) -> dict:
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "message": message,
                                             "finish_reason": finish, "stop_reason": matched}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7}}


def test_reply_text_usage_and_shape():
    out = to_anthropic(reply({"role": "assistant", "content": "Hello."}), "claude-x",
                       thinking=False)
    assert out["id"].startswith("msg_") and len(out["id"]) > 10
    assert out | {"id": ""} == {
        "id": "", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Hello."}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 7,
                                         "cache_creation_input_tokens": 0,
                                         "cache_read_input_tokens": 0}}


def test_reply_thinking_and_tool_use_blocks():
    msg = {"role": "assistant", "content": "Let me check.\n\n", "reasoning_content": "Hmm.",
           "tool_calls": [
               {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
               {"id": "call_2", "type": "function",
                "function": {"name": "now", "arguments": ""}}]}
    out = to_anthropic(reply(msg, "tool_calls"), "m", thinking=True)
    assert out["content"] == [
        {"type": "thinking", "thinking": "Hmm.", "signature": ""},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "now", "input": {}}]
    assert out["stop_reason"] == "tool_use"
    hidden = to_anthropic(reply(dict(msg, content=None), "tool_calls"), "m", thinking=False)
    assert [b["type"] for b in hidden["content"]] == ["tool_use", "tool_use"]


@pytest.mark.parametrize(("finish", "matched", "expected"), [
    ("stop", None, ("end_turn", None)), ("stop", "END", ("stop_sequence", "END")),
    ("length", None, ("max_tokens", None)), ("tool_calls", None, ("tool_use", None)),
    ("content_filter", None, ("refusal", None)), (None, None, ("end_turn", None)),
    ("length", "END", ("max_tokens", None))])
def test_stop_reasons(finish, matched, expected):
    assert stop_reason(finish, matched) == expected
    out = to_anthropic(reply({"content": "x"}, finish, matched), "m", thinking=False)
    assert (out["stop_reason"], out["stop_sequence"]) == expected


def test_tool_input_is_always_an_object():
    assert tool_input('{"a": 1}') == {"a": 1}
    assert tool_input({"a": 1}) == {"a": 1}
    assert tool_input("") == {} and tool_input(None) == {}
    assert tool_input("[1, 2]") == {} and tool_input("{not json") == {}


# -- errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "sent", "kind"), [
    (400, 400, "invalid_request_error"), (401, 401, "authentication_error"),
    (403, 403, "permission_error"), (404, 404, "not_found_error"),
    (413, 413, "request_too_large"), (415, 400, "invalid_request_error"),
    (422, 400, "invalid_request_error"), (429, 429, "rate_limit_error"),
    (500, 500, "api_error"), (502, 502, "api_error"), (503, 503, "overloaded_error"),
    (529, 529, "overloaded_error"), (409, 409, "invalid_request_error"),
    (501, 501, "api_error")])
def test_error_envelope(status, sent, kind):
    exc = ApiError("it went wrong", code="x", status=status)
    assert errors.status_of(exc) == sent
    assert errors.envelope(exc) == {"type": "error",
                                    "error": {"type": kind, "message": "it went wrong"}}


# -- streaming ---------------------------------------------------------------------------
def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> dict:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"object": "chat.completion.chunk", "choices": [choice], **extra}


def usage(prompt: int = 9, completion: int = 4) -> dict:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


def run(chunks, *, thinking: bool = True, count=lambda: 99) -> list[tuple[str, dict]]:
    raw = b"".join(Converter("claude-x", thinking=thinking, count=count).events(iter(chunks)))
    out = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data[6:])
        assert payload["type"] == name[7:]
        out.append((name[7:], payload))
    return out


def shape(events: list[tuple[str, dict]]) -> list[tuple]:
    """(event, index, what) triples, short enough to compare whole."""
    out = []
    for name, d in events:
        if name == "content_block_start":
            out.append((name, d["index"], d["content_block"]["type"]))
        elif name == "content_block_delta":
            delta = d["delta"]
            value = delta.get("text", delta.get("thinking", delta.get("partial_json")))
            out.append((name, d["index"], value))
        elif name == "content_block_stop":
            out.append((name, d["index"]))
        else:
            out.append((name,))
    return out


def test_stream_text():
    events = run([chunk({"role": "assistant", "content": ""}, helexa_prompt_tokens=21),
                  chunk({"content": "Hel"}), chunk({"content": "lo."}), chunk(finish="stop"),
                  usage(21, 2)])
    assert shape(events) == [
        ("message_start",), ("ping",), ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "Hel"), ("content_block_delta", 0, "lo."),
        ("content_block_stop", 0), ("message_delta",), ("message_stop",)]
    start = events[0][1]["message"]
    assert start["model"] == "claude-x" and start["id"].startswith("msg_")
    assert start["content"] == [] and start["usage"]["input_tokens"] == 21
    assert events[2][1]["content_block"] == {"type": "text", "text": ""}
    assert events[-2][1] == {"type": "message_delta",
                             "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                             "usage": {"input_tokens": 21, "output_tokens": 2,
                                       "cache_creation_input_tokens": 0,
                                       "cache_read_input_tokens": 0}}


def test_stream_interleaved_blocks_get_their_own_indexes():
    call = {"index": 0, "id": "call_a", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    second = {"index": 1, "id": "call_b", "type": "function",
              "function": {"name": "now", "arguments": "{}"}}
    events = run([chunk({"role": "assistant", "content": ""}, helexa_prompt_tokens=5),
                  chunk({"reasoning_content": "Need "}), chunk({"reasoning_content": "both."}),
                  chunk({"content": "Let me check."}), chunk({"content": "\n"}),
                  chunk({"tool_calls": [call]}), chunk({"content": "\n"}),
                  chunk({"tool_calls": [second]}), chunk({"content": " \n"}),
                  chunk({"reasoning_content": "Then "}), chunk({"content": "Done."}),
                  chunk(finish="tool_calls"), usage()])
    assert shape(events)[2:-2] == [
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "Need "),
        ("content_block_delta", 0, "both."), ("content_block_stop", 0),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "Let me check."),
        ("content_block_stop", 1),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, '{"city": "Paris"}'), ("content_block_stop", 2),
        ("content_block_start", 3, "tool_use"), ("content_block_delta", 3, "{}"),
        ("content_block_stop", 3),
        ("content_block_start", 4, "thinking"), ("content_block_delta", 4, "Then "),
        ("content_block_stop", 4),
        ("content_block_start", 5, "text"), ("content_block_delta", 5, "Done."),
        ("content_block_stop", 5)]
    assert events[9][1]["content_block"] == {"type": "tool_use", "id": "call_a",
                                             "name": "get_weather", "input": {}}
    assert events[2][1]["content_block"] == {"type": "thinking", "thinking": "",
                                             "signature": ""}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_stream_arguments_in_fragments():
    # OpenAI-style upstreams send the id and name first, then the arguments in pieces.
    head = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}
    parts = [{"index": 0, "function": {"arguments": p}} for p in ('{"a"', ": 1}")]
    events = run([chunk({"role": "assistant"}, helexa_prompt_tokens=1),
                  chunk({"tool_calls": [head]}), *(chunk({"tool_calls": [p]}) for p in parts),
                  chunk(finish="tool_calls"), usage()])
    assert shape(events)[2:-2] == [
        ("content_block_start", 0, "tool_use"), ("content_block_delta", 0, '{"a"'),
        ("content_block_delta", 0, ": 1}"), ("content_block_stop", 0)]
    assert all(d["delta"]["type"] == "input_json_delta" for n, d in events
               if n == "content_block_delta")


def test_stream_hides_thinking_unless_asked():
    events = run([chunk({"role": "assistant"}, helexa_prompt_tokens=1),
                  chunk({"reasoning_content": "secret"}), chunk({"content": "Hi!"}),
                  chunk(finish="stop"), usage()], thinking=False)
    assert shape(events)[2:-2] == [("content_block_start", 0, "text"),
                                   ("content_block_delta", 0, "Hi!"), ("content_block_stop", 0)]


def test_stream_stop_sequence_and_trailing_space():
    events = run([chunk({"role": "assistant"}, helexa_prompt_tokens=3),
                  chunk({"content": "Hello from tiny"}), chunk({"content": " "}),
                  {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop",
                                "stop_reason": "cortex"}]}, usage(3, 4)])
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello from tiny "  # the space before the stop string is the answer's
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "cortex"}
    assert events[-2][1]["usage"]["output_tokens"] == 4


def test_stream_input_tokens_fall_back_to_counting():
    asked = []
    events = run([chunk({"role": "assistant"}), chunk({"content": "x"}), chunk(finish="stop"),
                  usage(7, 1)], count=lambda: asked.append(1) or 7)
    assert asked == [1] and events[0][1]["message"]["usage"]["input_tokens"] == 7


def test_stream_keepalives_become_pings():
    events = run([None, chunk({"role": "assistant"}, helexa_prompt_tokens=1), None,
                  chunk({"content": "x"}), chunk(finish="stop"), usage()])
    assert [n for n, _ in events][:4] == ["message_start", "ping", "ping",
                                          "content_block_start"]


def test_stream_upstream_error_chunk_ends_with_an_error_event():
    err = {"error": {"message": "waited 30 s without a free slot", "type": "x",
                     "code": "rate_limit_exceeded"}}
    events = run([chunk({"role": "assistant"}, helexa_prompt_tokens=1),
                  chunk({"content": "par"}), err])
    assert [n for n, _ in events][-2:] == ["content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {
        "type": "overloaded_error", "message": "waited 30 s without a free slot"}}
    failed = run([chunk({"role": "assistant"}, helexa_prompt_tokens=1),
                  {"error": {"message": "engine failed", "code": "engine_error"}}])
    assert failed[-1][1]["error"] == {"type": "api_error", "message": "engine failed"}


def test_stream_broken_upstream_ends_with_an_error_event():
    closed = []

    class Broken:
        def __iter__(self):
            return self

        def __next__(self):
            if not closed:
                closed.append("started")
                return chunk({"role": "assistant"}, helexa_prompt_tokens=1)
            raise ApiError("the neuron's stream broke off", code="upstream_stream_error",
                           status=502)

        def close(self):
            closed.append("closed")

    raw = b"".join(Converter("m", thinking=False, count=lambda: 0).events(Broken()))
    assert raw.endswith(b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
                        b'"message":"the neuron\'s stream broke off"}}\n\n')
    assert b"message_stop" not in raw and closed == ["started", "closed"]
    # nothing at all before the end: an error too, never an empty success
    assert run([])[-1][1]["error"]["type"] == "api_error"


# -- Claude Code's billing line, structured output, cached tokens --------------------------
def test_billing_line_loses_its_per_request_values_only():
    line = "x-anthropic-billing-header: cc_version=2.1.197.{}; cc_entrypoint=sdk-cli;"
    old = "x-anthropic-billing-header: cc_version=1.0.88.abc; cc_entrypoint=cli; cch={};"
    for template in (line, old):
        a, b = (to_openai({"model": "m", "max_tokens": 1, "messages": [
            {"role": "user", "content": "Hi"}], "system": [
            {"type": "text", "text": template.format(h)},
            {"type": "text", "text": "You are an agent.\n  keep me  byte for byte "}]})
            for h in ("725", "3f2a1"))
        assert a["messages"][0] == b["messages"][0]
        assert "725" not in a["messages"][0]["content"]
        assert a["messages"][0]["content"].endswith(
            "\n\nYou are an agent.\n  keep me  byte for byte ")
    plain = "cc_version=2.1.197.725 is not a billing line"
    assert to_openai({"model": "m", "max_tokens": 1, "system": plain, "messages": [
        {"role": "user", "content": "Hi"}]})["messages"][0]["content"] == plain


def test_output_config_format_becomes_response_format():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    req = to_openai({"model": "m", "max_tokens": 9, "messages": [{"role": "user",
                     "content": "Hi"}], "output_config": {"format": {
                         "type": "json_schema", "schema": schema}, "effort": "high"}})
    assert req["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": schema, "strict": True}}
    with pytest.raises(BadRequest) as exc:
        to_openai({"model": "m", "max_tokens": 9, "messages": [{"role": "user",
                   "content": "Hi"}], "output_config": {"format": {"type": "xml"}}})
    assert exc.value.param == "output_config.format"


def test_cached_tokens_are_reported_as_cache_reads():
    reply = {"choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 100, "completion_tokens": 2,
                       "prompt_tokens_details": {"cached_tokens": 80}}}
    assert to_anthropic(reply, "m", thinking=False)["usage"] == {
        "input_tokens": 20, "output_tokens": 2, "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 80}
