"""The test kit writes the services' TOML from dicts: what it writes reads back the same."""

from __future__ import annotations

import tomllib

import pytest

from cortex.testing import tomlfile

ROUND_TRIPS = [
    ("scalars", {"listen": "127.0.0.1:1", "n_ctx": 512, "ratio": 0.5, "on": True}),
    ("a string TOML must escape", {"s": 'quote " back \\ tab \t nl \n del \x7f é 😀'}),
    ("arrays", {"admin_keys": ["a", "b"], "empty": [], "mixed": ["file:a", {"model_id": "x"}]}),
    ("a table and a nested one", {"gateway": {"workers": 2, "limits": {"rps": 3}}}),
    ("an array of tables", {"neurons": [{"name": "n1", "endpoint": "http://a"},
                                        {"name": "n2", "endpoint": "http://b"}]}),
    ("keys that are not bare", {"aliases": {"gpt-4o-mini": "tiny", "a.b c": "d"}}),
    ("top-level keys after tables in the dict", {"t": {"x": 1}, "top": "y"}),
]


@pytest.mark.parametrize("data", [row[1] for row in ROUND_TRIPS],
                         ids=[row[0] for row in ROUND_TRIPS])
def test_dumps_reads_back_as_written(data):
    assert tomllib.loads(tomlfile.dumps(data)) == data


def test_none_leaves_a_key_out():
    assert tomllib.loads(tomlfile.dumps({"a": None, "b": 1})) == {"b": 1}


def test_merge_lays_overlays_over_the_base():
    base = {"listen": "x", "admission": {"max_queue_depth": 8, "max_wait_secs": 5}}
    got = tomlfile.merge(base, {"admission": {"max_queue_depth": 1}},
                         'n_ctx = 64\n[hf]\noffline = true\n', None)
    assert got == {"listen": "x", "n_ctx": 64, "hf": {"offline": True},
                   "admission": {"max_queue_depth": 1, "max_wait_secs": 5}}
    assert base["admission"]["max_queue_depth"] == 8  # the base is left as it was
