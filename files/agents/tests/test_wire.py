"""Framework-free body checks (cortex.core.wire): JSON nesting depth; orjson's fast path
(cortex.core.fastjson) reads and writes what json does."""

from __future__ import annotations


def _nesting(v) -> int:
    if isinstance(v, dict):
        return 1 + max(map(_nesting, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_nesting, v), default=0)
    return 0


def test_json_nesting_is_counted_like_the_recursive_definition():
    # Property test over arbitrary JSON, with a limit that cuts the count short.
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cortex.core.wire import shape

    tricky = st.text(st.sampled_from('{}[]"\\\\ab\u00e9\U0001F600'), max_size=8)
    values = st.recursive(st.none() | st.integers() | tricky,
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(tricky, inner, max_size=3), max_leaves=20)

    @settings(max_examples=300, deadline=None)
    @given(v=values, limit=st.integers(1, 6))
    def check(v, limit):
        got, _ = shape(v, limit)
        assert got == _nesting(v) if _nesting(v) <= limit else got == limit + 1

    check()


def test_brackets_in_strings_are_not_nesting():
    import json

    from cortex.core.wire import MAX_JSON_DEPTH, parse_json_object

    text = "[" * (MAX_JSON_DEPTH * 3) + '"\\'
    body = parse_json_object(json.dumps({"messages": [{"content": text}]}).encode())
    assert body["messages"][0]["content"] == text


def test_the_fast_path_reads_and_writes_what_json_does():
    # Any JSON, integers past 64 bits included (orjson alone would turn them into floats
    # when reading, and refuse to write them): parsed equal, written back equal.
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cortex.core import fastjson
    from cortex.core.wire import parse_json_object

    text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
    scalars = (st.none() | st.booleans() | st.integers() | text
               | st.floats(allow_nan=False, allow_infinity=False))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(text, inner, max_size=3), max_leaves=20)

    @settings(max_examples=300, deadline=None)
    @given(v=st.dictionaries(text, values, max_size=4), ensure_ascii=st.booleans())
    def check(v, ensure_ascii):
        raw = json.dumps(v, ensure_ascii=ensure_ascii).encode()
        parsed = parse_json_object(raw)
        assert parsed == json.loads(raw)
        assert json.loads(fastjson.dumps(parsed)) == v
        assert fastjson.loads(raw) == json.loads(raw)

    check()


def test_a_long_integer_stays_whole():
    from cortex.core import fastjson
    from cortex.core.wire import parse_json_object

    big = 2**70 + 1
    body = parse_json_object(b'{"seed": %d, "n": [1e3, -12345678901234567890]}' % big)
    assert body["seed"] == big and isinstance(body["seed"], int)
    assert body["n"][1] == -12345678901234567890
    assert fastjson.dumps(body) == b'{"seed":%d,"n":[1000.0,-12345678901234567890]}' % big


def test_numbers_past_a_double_are_refused_naming_the_field():
    # 1e400 once parsed to infinity: a sampler got garbage, and the gateway forwarded null.
    import pytest

    from cortex.core.errors import BadRequest
    from cortex.core.wire import parse_json_object

    for raw, where in [(b'{"temperature": 1e400}', "temperature"),
                       (b'{"a": [1, {"b": -1e999}]}', "a[1].b"),
                       (b'{"x": 1' + b"0" * 400 + b'.5}', "x"),
                       (b'{"seed": 123456789012345678901234, "t": 1e309}', "t")]:
        with pytest.raises(BadRequest) as exc:
            parse_json_object(raw)
        assert exc.value.status == 400 and exc.value.body()["error"]["param"] == where
        assert "finite" in str(exc.value)
    assert parse_json_object(b'{"t": 1.7e308, "u": 5e-400}') == {"t": 1.7e308, "u": 0.0}


def test_a_body_must_say_it_is_json():
    # A browser's no-cors POST sends no Content-Type (or text/plain) and needs no preflight.
    import pytest

    from cortex.core.errors import ApiError
    from cortex.core.wire import check_json_type

    for mimetype in ("", "text/plain", "application/x-www-form-urlencoded",
                     "multipart/form-data"):
        with pytest.raises(ApiError) as exc:
            check_json_type(mimetype)
        assert exc.value.status == 415 and "application/json" in str(exc.value)
    check_json_type("application/json")
    check_json_type("application/merge-patch+json")
