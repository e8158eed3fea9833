"""Regression tests for the 5xx that the fuzzer (test_fuzz_api.py) found, on real servers.

Each failed before its fix: a non-string `messages[].role` was a TypeError (a neuron 500,
retried by the gateway into a 502), and an empty prompt reached llama.cpp with no tokens.
"""

from __future__ import annotations

import pytest

from cortex.gateway.config import ModelEntry
from cortex.testing.openapi_check import Contract

MSG = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def pair(neuron_factory, gateway_factory):
    n = neuron_factory()
    n.load("file:tiny-hello")
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")])
    return n, gw


def _names_field(r, field: str) -> bool:
    err = r.json().get("error", {})
    return err.get("param") == field or field in err.get("message", "")


@pytest.mark.parametrize("role", [{}, [], ["user"]])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
def test_neuron_non_string_role_is_a_4xx_naming_it(pair, path, role):
    n, _ = pair
    r = n.post(path, {"model": "file:tiny-hello", "messages": [{"role": role, "content": "Hi"}]})
    assert r.status_code in (400, 422), r.text
    assert _names_field(r, "messages[0].role"), r.text
    Contract("cortex.neuron").check(r)


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": "tiny-hello", "messages": [{"role": {}, "content": "x"}]}),
    ("/v1/chat/completions", {"model": "tiny-hello", "stream": True,
                              "messages": [{"role": [], "content": "x"}]}),
])
def test_gateway_non_string_role_is_the_neurons_4xx(pair, path, body):
    _, gw = pair
    r = gw.post(path, body)
    assert r.status_code in (400, 422), r.text
    assert _names_field(r, "messages[0].role"), r.text
    Contract("cortex.gateway").check(r)


@pytest.mark.parametrize("prompt", ["", [""]])
@pytest.mark.parametrize("stream", [False, True])
def test_empty_prompt_is_no_server_error(pair, prompt, stream):
    n, gw = pair
    for server, model, package in ((n, "file:tiny-hello", "cortex.neuron"),
                                   (gw, "tiny-hello", "cortex.gateway")):
        r = server.post("/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 4,
                                            "stream": stream})
        assert r.status_code < 500, r.text
        if stream and r.status_code == 200:
            assert '"internal_error"' not in r.text and '"generation_failed"' not in r.text
        if r.status_code >= 400:
            assert _names_field(r, "prompt"), r.text
        Contract(package).check(r)
