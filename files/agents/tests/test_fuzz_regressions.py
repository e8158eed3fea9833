"""Regression tests for the 5xx that the fuzzer (test_fuzz_api.py) found, on real servers.

Those in code that another change owns (input validation in neuron/chat.py; the gateway
retrying a neuron's 500 as a 502) are xfail until that change lands: each must then pass,
and its entry in test_fuzz_api.known_issue goes.
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


UNHASHABLE_ROLE = pytest.mark.xfail(strict=False, reason=(
    "fuzz: messages[].role as an object or a list is a TypeError (unhashable) in "
    "neuron/chat.py _messages (`role not in ROLES`): a neuron 500, and the gateway retries "
    "it into a 502; input hardening owns chat.py"))
EMPTY_PROMPT = pytest.mark.xfail(strict=False, reason=(
    "fuzz: an empty prompt tokenizes to no tokens on a model without BOS and llama.cpp's "
    "sample() asserts (generation_failed 500, a 502 through the gateway); the check belongs "
    "in neuron/chat.py (input hardening owns it)"))


@UNHASHABLE_ROLE
@pytest.mark.parametrize("role", [{}, [], ["user"]])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
def test_neuron_non_string_role_is_a_4xx_naming_it(pair, path, role):
    n, _ = pair
    r = n.post(path, {"model": "file:tiny-hello", "messages": [{"role": role, "content": "Hi"}]})
    assert r.status_code in (400, 422), r.text
    assert _names_field(r, "messages[0].role"), r.text
    Contract("cortex.neuron").check(r)


@UNHASHABLE_ROLE
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


@EMPTY_PROMPT
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
