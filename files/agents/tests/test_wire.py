"""Framework-free body checks (cortex.core.wire): JSON nesting depth."""

from __future__ import annotations


def _nesting(v) -> int:
    if isinstance(v, dict):
        return 1 + max(map(_nesting, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_nesting, v), default=0)
    return 0


def test_json_depth_scan_matches_the_real_nesting():
    # The depth check reads raw bytes: brackets, quotes and backslashes inside strings
    # must not fool it (property test over arbitrary JSON).
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cortex.core.wire import _depth

    tricky = st.text(st.sampled_from('{}[]"\\\\ab\u00e9\U0001F600'), max_size=8)
    values = st.recursive(st.none() | st.integers() | tricky,
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(tricky, inner, max_size=3), max_leaves=20)

    @settings(max_examples=300, deadline=None)
    @given(v=values, ensure_ascii=st.booleans())
    def check(v, ensure_ascii):
        import json

        assert _depth(json.dumps(v, ensure_ascii=ensure_ascii).encode()) == _nesting(v)

    check()


def test_brackets_in_strings_are_not_nesting():
    import json

    from cortex.core.wire import MAX_JSON_DEPTH, parse_json_object

    text = "[" * (MAX_JSON_DEPTH * 3) + '"\\'
    body = parse_json_object(json.dumps({"messages": [{"content": text}]}).encode())
    assert body["messages"][0]["content"] == text
