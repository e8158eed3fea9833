"""The text stream: stop strings and UTF-8 held back until they are whole."""

from __future__ import annotations

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
