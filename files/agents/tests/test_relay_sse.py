"""The gateway's one SSE scanner and usage reader (gateway/relay/sse.py): table tests."""

from __future__ import annotations

import json

import pytest

from cortex.gateway.relay.sse import Reading, Scanner, Usage, billed, data_of, events, usage_of


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


ROLE = _event({"choices": [{"delta": {"role": "assistant", "content": ""}}],
               "helexa_prompt_tokens": 9})
MARKER = _event({"choices": [{"delta": {"content": "data: [DONE]\n\ndata: [DONE]"}}]})
TEXT = _event({"choices": [{"delta": {"content": "hi"}}]})
USAGE = _event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
TEXT_USAGE = _event({"choices": [{"delta": {"content": '{"usage": 1}'}}]})
ERROR = _event({"error": {"message": "gone", "code": "model_unloaded"}})
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize("pieces, whole", [
    ([TEXT], [TEXT]),
    ([TEXT[:7], TEXT[7:]], [b"", TEXT]),  # an event split across reads comes out once whole
    ([TEXT + TEXT[:3], TEXT[3:] + DONE], [TEXT, TEXT + DONE]),
    ([b": queued\n\n", TEXT], [b": queued\n\n", TEXT]),
    ([TEXT.replace(b"\n", b"\r\n")], [TEXT]),  # CR LF line ends come out as LF
    ([TEXT.replace(b"\n", b"\r\n")[:-1], b"\n"], [TEXT, b""]),  # a CR, then its LF
    ([b"data: {}\r", b"\r"], [b"", b"data: {}\n\n"]),  # CR line ends
    ([b"data: {}\r", b"\n\r\n"], [b"", b"data: {}\n\n"]),
])
def test_the_scanner_gives_whole_events(pieces, whole):
    s = Scanner()
    assert [s.feed(p) for p in pieces] == whole
    assert not s.pending


def test_events_and_their_data():
    assert events(TEXT + b": keep-alive\n\n" + DONE) == [TEXT[:-2], b": keep-alive", DONE[:-2]]
    assert data_of(b": keep-alive") is None
    assert data_of(DONE[:-2]) == b"[DONE]"
    assert data_of(b"event: x\ndata: a\ndata:b") == b"a\nb"  # SSE: lines joined by LF


@pytest.mark.parametrize("stream, done, usage, prompt, content", [
    # The marker written by a model is content, never the end, and bills no usage.
    ([ROLE, MARKER, TEXT], False, None, 9, 2),
    ([ROLE, MARKER, USAGE, DONE], True, Usage(9, 3), 9, 1),
    # Usage comes only from a parsed event's own `usage` object, not from text that says it.
    ([ROLE, TEXT_USAGE, DONE], True, None, 9, 1),
    ([ROLE, TEXT, ERROR, DONE], True, None, 9, 1),
    ([b": queued\n\n", ROLE, TEXT, TEXT], False, None, 9, 2),
    ([TEXT, TEXT], False, None, None, 2),  # /v1/completions: no role chunk
])
def test_a_reading_of_a_stream(stream, done, usage, prompt, content):
    for how in ("whole", "parsed"):
        r = Reading()
        if how == "whole":
            r.take(b"".join(stream))
        else:
            for e in events(b"".join(stream)):
                data = data_of(e)
                if data == b"[DONE]":
                    r.done = True
                elif data is not None:
                    r.chunk(json.loads(data))
        assert (r.done, r.usage, r.prompt_tokens, r.events) == (done, usage, prompt, content)


@pytest.mark.parametrize("stream, answered, bill", [
    ([ROLE, TEXT, USAGE, DONE], True, Usage(9, 3)),  # what the neuron said
    ([ROLE, TEXT, TEXT], True, Usage(9, 2)),  # cut: the prompt and a token an event
    ([TEXT, TEXT], True, Usage(50, 2)),  # no first chunk with the prompt: the estimate
    ([ROLE, TEXT, ERROR, DONE], True, Usage(9, 1)),  # the neuron gave up
    ([b": queued\n\n"], True, Usage(0, 0)),  # nothing relayed
    ([ERROR], False, Usage(0, 0)),  # refused
])
def test_what_a_request_is_billed(stream, answered, bill):
    r = Reading()
    r.take(b"".join(stream))
    assert billed(r, answered, lambda: 50) == bill


@pytest.mark.parametrize("obj, usage", [
    ({"usage": {"prompt_tokens": 4, "completion_tokens": 2}}, Usage(4, 2)),
    ({"usage": {"prompt_tokens": 4, "total_tokens": 4}}, Usage(4, 0)),  # embeddings
    ({"usage": None}, None),
    ({"usage": {"prompt_tokens": -1, "completion_tokens": True}}, Usage(0, 0)),
    ([], None),
])
def test_usage_of(obj, usage):
    assert usage_of(obj) == usage
