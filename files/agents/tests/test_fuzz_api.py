"""Fuzzing both servers from their OpenAPI documents (schemathesis), on loopback.

Every operation of each document gets generated requests, valid and invalid; each answer
must be no 5xx and must conform to the document (status, content type, headers, body).
The run in `make test` is short: FUZZ_EXAMPLES generated requests per operation (default
20), valid and invalid. `make fuzz` runs the long one: FUZZ_EXAMPLES=300 and FUZZ_COVERAGE=1,
schemathesis' coverage phase too (boundary values and wrong types for every field, and the
undocumented methods of each path: thousands of requests more).
Generation is bounded so that the fuzzer cannot start long generations on the 2-core
machine: inference requests name the one loaded tiny model (which stops after a few tokens)
and ask for at most 16 tokens; a body that names another model, or asks for more, still
goes out in the negative phase and must be a 4xx.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cortex.core import openapi
from cortex.gateway.config import EntitlementsSection, KeyEntry, ModelEntry, Window
from cortex.testing.served import serve_gateway, serve_neuron

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
COVERAGE = os.environ.get("FUZZ_COVERAGE", "") not in ("", "0")
TOKEN, KEY, ADMIN = "fuzz-neuron-token", "sk-fuzz", "fuzz-admin"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# Fields that set how much a request generates, and the bound the fuzzer keeps to.
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
MAX_FUZZ_TOKENS = 16


def fuzz_document(package: str, models: list[str]) -> dict:
    """The shipped document, narrowed for generation: `model` is one of `models` and token
    counts are small. (Responses are still checked against these same schemas.)"""
    doc = copy.deepcopy(openapi.document(package))
    for schema in doc["components"]["schemas"].values():
        props = schema.get("properties", {})
        if "model" in props and any(k in props for k in ("messages", "prompt", "input")):
            props["model"] = {"type": "string", "enum": models}
        for name in TOKEN_FIELDS:
            if name in props:
                props[name] = {"type": "integer", "minimum": 1, "maximum": MAX_FUZZ_TOKENS}
    return doc


@pytest.fixture(scope="module")
def servers(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A neuron to fuzz, and a gateway over a second neuron (so that the neuron's own fuzz,
    which may drain it, leaves the gateway's fleet alone)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    neurons = []
    for name in ("fuzzed", "behind-gateway"):
        n = serve_neuron(models_dir, tmp / name, n_ctx=256, n_threads=1, auth_token=TOKEN)
        n.http.headers["Authorization"] = f"Bearer {TOKEN}"
        n.load("file:tiny-hello")
        neurons.append(n)
    # The key is capped (far above what the fuzz spends): every generated body goes
    # through the caps' input count, reservation and output clamp.
    gw = serve_gateway({"n1": neurons[1]}, tmp / "gw", [ModelEntry(id="tiny-hello")],
                       poll_interval_secs=0.5, neuron_token=TOKEN, admin_keys=[ADMIN],
                       entitlements=EntitlementsSection(
                           require_auth=True, count_requests_per_minute=100_000, keys=[
                               KeyEntry(key=KEY, account_id="fuzz", hard_cap=10**12,
                                        window=Window(kind="rolling", seconds=3600))]))
    yield {"neuron": neurons[0], "gateway": gw}
    gw.close()
    for n in neurons:
        n.close()


# Built at import (the servers are given per call): schemathesis' fixture-based loader
# reaches into a pytest private that pytest 9 no longer has.
CONFIG = schemathesis.Config.from_dict({"generation": {"mode": "all"},
                                         "phases": {"coverage": {"enabled": COVERAGE}}})
neuron_api = schemathesis.openapi.from_dict(
    fuzz_document("cortex.neuron", ["file:tiny-hello", "tiny-hello"]), config=CONFIG)
gateway_api = schemathesis.openapi.from_dict(fuzz_document("cortex.gateway", ["tiny-hello"]),
                                             config=CONFIG)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def _call(case, url: str, headers: dict[str, str]) -> None:
    response = case.call(base_url=url, headers=headers, timeout=60)
    case.validate_response(response, checks=CHECKS, headers=headers,
                           transport_kwargs={"base_url": url, "headers": headers})


@neuron_api.parametrize()
@FUZZ
def test_fuzz_neuron(case, servers):
    _call(case, servers["neuron"].url, {"Authorization": f"Bearer {TOKEN}"})


@gateway_api.parametrize()
@FUZZ
def test_fuzz_gateway(case, servers):
    key = ADMIN if case.path.startswith("/admin/") else KEY
    _call(case, servers["gateway"].url, {"Authorization": f"Bearer {key}"})
