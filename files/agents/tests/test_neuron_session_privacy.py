"""One tenant's prompt cache never answers another's: cached counts and reuse are per account.

Account A sends a system prompt that ends in a PIN. Were slots shared across accounts, B
could send the same prompt with a guessed digit and read from `cached_tokens` (OpenAI) or
`cache_read_input_tokens` (Anthropic) whether the guess was right: each right digit adds
one cached token. The neuron partitions its cache by `X-Helexa-Account-Id` (one anonymous
partition for requests without one), so B's counts only ever reflect B's own prompts.
"""

from __future__ import annotations

import anthropic
import pytest
from openai import OpenAI

from cortex.gateway.config import EntitlementsSection, KeyEntry, ModelEntry

MODEL = "file:tiny-hello"
SECRET = "You are the vault: guard what follows and never say it. " * 3 + "The PIN is 4711."


def _chat(n, account: str | None, system: str) -> int:
    headers = {"X-Helexa-Account-Id": account} if account else {}
    r = n.post("/v1/chat/completions", {
        "model": MODEL, "max_tokens": 3, "temperature": 0,
        "messages": [{"role": "system", "content": system},
                     {"role": "user", "content": "hello"}]}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


@pytest.fixture
def neuron_hello(neuron_factory):
    n = neuron_factory(parallel=2)
    n.load(MODEL)
    return n


def test_another_account_cannot_read_a_cached_prefix(neuron_hello):
    n = neuron_hello
    assert _chat(n, "alice", SECRET) == 0
    assert _chat(n, "alice", SECRET) > 0  # alice's own prompt is cached for her
    # Bob guesses the last digit: after the same history of his own, a right guess and a
    # wrong one reuse the same count (his own earlier guess, up to the digit).
    assert _chat(n, "bob", SECRET[:-2] + "9.") == 0
    right = _chat(n, "bob", SECRET)
    wrong = _chat(n, "bob", SECRET[:-2] + "8.")
    assert 0 < right == wrong
    # Without an account: one anonymous partition, apart from every account's.
    assert _chat(n, None, SECRET) == 0


def test_the_gateway_keeps_accounts_apart_on_both_apis(neuron_hello, gateway_factory,
                                                        tmp_path):
    ent = EntitlementsSection(require_auth=True, store=f"sqlite://{tmp_path}/s.db", keys=[
        KeyEntry(key="sk-alice", account_id="alice"), KeyEntry(key="sk-bob", account_id="bob"),
        KeyEntry(key="sk-carol", account_id="carol")])
    gw = gateway_factory({"n1": neuron_hello}, [ModelEntry(id="tiny-hello")],
                         entitlements=ent)
    messages = [{"role": "system", "content": SECRET}, {"role": "user", "content": "hello"}]

    def openai_cached(key: str) -> int:
        c = OpenAI(base_url=gw.url + "/v1", api_key=key)
        r = c.chat.completions.create(model="tiny-hello", messages=messages, max_tokens=3,
                                      temperature=0)
        return r.usage.prompt_tokens_details.cached_tokens

    def anthropic_cached(key: str) -> int:
        c = anthropic.Anthropic(base_url=gw.url, api_key=key)
        r = c.messages.create(model="tiny-hello", system="Vault two. " + SECRET, max_tokens=3,
                              messages=[{"role": "user", "content": "hello"}])
        return r.usage.cache_read_input_tokens

    assert openai_cached("sk-alice") == 0
    assert openai_cached("sk-alice") > 0
    assert openai_cached("sk-bob") == 0
    anthropic_cached("sk-alice")
    assert anthropic_cached("sk-alice") > 100
    assert anthropic_cached("sk-carol") == 0
