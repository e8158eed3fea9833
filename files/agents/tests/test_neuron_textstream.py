"""The text stream: stop strings and UTF-8 held back until they are whole."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cortex.core.validate import MAX_STOP_CHARS, MAX_STOPS
from cortex.neuron.textstream import TextStream


def test_text_stream_holds_back_partial_stops_and_utf8():
    s = TextStream(["END"])
    assert s.feed(b"abc E") == "abc "
    assert s.feed(b"N") == ""
    assert s.feed(b"Dx") == "" and s.stopped_by == "END"
    s = TextStream([])
    assert s.feed("é".encode()[:1]) == ""
    assert s.feed("é".encode()[1:]) == "é"
    s = TextStream(["zz"])
    assert s.feed(b"az") == "a" and s.flush() == "z"


class _Naive:
    """The whole-text search the stream must agree with (obviously right, quadratic)."""

    def __init__(self, stop: list[str]) -> None:
        self.stop = [s for s in stop if s]
        self.pending = ""
        self.stopped_by = None

    def feed(self, text: str) -> str:
        if self.stopped_by is not None:
            return ""
        self.pending += text
        hits = [(self.pending.find(s), s) for s in self.stop if s in self.pending]
        if hits:
            at, self.stopped_by = min(hits)
            out, self.pending = self.pending[:at], ""
            return out
        keep = max((n for s in self.stop for n in range(len(s))
                    if n and self.pending.endswith(s[:n])), default=0)
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[
            len(self.pending) - keep:]
        return out


@given(st.lists(st.text("abc", max_size=6), max_size=30),
       st.lists(st.text("abc", min_size=1, max_size=5), max_size=4))
def test_incremental_matching_agrees_with_a_whole_text_search(pieces, stops):
    s, ref = TextStream(stops), _Naive(stops)
    for p in pieces:
        assert s.feed(p.encode()) == ref.feed(p)
        assert s.stopped_by == ref.stopped_by
    assert s.flush() == ("" if ref.stopped_by else ref.pending)


def test_long_stops_cost_per_character_not_per_stop_length():
    # Sixteen stops of the longest allowed length that the text keeps almost matching
    # ("aaa...b" against a stream of "a"): each token advances each stop's state once.
    stops = ["a" * (MAX_STOP_CHARS - 1) + chr(ord("b") + i) for i in range(MAX_STOPS)]
    s = TextStream(stops)
    out = "".join(s.feed(b"a") for _ in range(3 * MAX_STOP_CHARS))
    assert len(out) == 3 * MAX_STOP_CHARS - (MAX_STOP_CHARS - 1)  # the rest may still stop
    assert s.feed(b"c") == "" and s.stopped_by == stops[1]


@pytest.mark.parametrize("stop, message", [
    ([f"s{i}" for i in range(MAX_STOPS + 1)], f"at most {MAX_STOPS} stop sequences"),
    (["x" * (MAX_STOP_CHARS + 1)], f"at most {MAX_STOP_CHARS} characters"),
])
def test_stop_strings_are_bounded(neuron, stop, message):
    n = neuron
    n.load("file:tiny-hello")
    r = n.http.post(n.url + "/v1/chat/completions", headers={
        "Authorization": f"Bearer {n.token}"}, json={
        "model": "file:tiny-hello", "messages": [{"role": "user", "content": "Hi"}],
        "stop": stop}, timeout=30)
    assert r.status_code == 422, r.text  # the neuron's status for a field out of bounds
    err = r.json()["error"]
    assert err["param"] == "stop" and message in err["message"], err
