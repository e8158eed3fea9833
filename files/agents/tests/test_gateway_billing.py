"""What a streamed answer is billed, however it ends (issue 19, "tokens for free").

Real `neuron serve` and `cortex serve` processes, a fault proxy between them, and a tiny
model whose answer is the text `data: [DONE]? more`, over and over: the marker that ends
an event stream, written by the model inside its content. Each case checks the spend the
gateway reports for the key (its metrics port), as an operator would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from cortex.testing.faults import Cut, FaultProxy
from cortex.testing.processes import (
    FLEET_NEURON,
    SERVICE_ERRORS,
    GatewayServer,
    NeuronServer,
    metric,
)
from cortex.testing.tiny_gguf import build_tiny_gguf
from cortex.testing.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

MODEL = "tiny-done"
LONG = 60000  # a stream that runs until something ends it
CAP = 100
KEYS = {  # account: a key of its own, so each case reads its own spend
    "capped": {"key": "sk-capped", "account_id": "capped", "hard_cap": CAP},
    "openai": {"key": "sk-openai", "account_id": "openai"},
    "anthropic": {"key": "sk-anthropic", "account_id": "anthropic"},
    "responses": {"key": "sk-responses", "account_id": "responses"},
    "unload": {"key": "sk-unload", "account_id": "unload"},
}


class Fleet:
    def __init__(self, neuron: NeuronServer, proxy: FaultProxy, gw: GatewayServer) -> None:
        self.neuron, self.proxy, self.gw = neuron, proxy, gw

    def spend(self, account: str, kind: str = "") -> float:
        name = f"cortex_spend_{kind + '_' if kind else ''}tokens_total"
        return metric(self.gw.metrics(), name, account=account)

    def billed(self, account: str, at_least: float = 1) -> tuple[float, float]:
        """(prompt, completion) tokens billed to `account`, once a bill has come (metrics
        reach the port within a second)."""
        wait_for(lambda: self.spend(account) >= at_least, f"{account} billed", 10,
                 ignore=SERVICE_ERRORS)
        return self.spend(account, "prompt"), self.spend(account, "completion")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("billing")
    models = work / "models"
    models.mkdir()
    # "data: [DONE]" is one token: every content event of the answer carries the marker.
    build_tiny_gguf(models / f"{MODEL}.gguf", script=["data:▁[DONE]", "?", "▁more"],
                    loop=True, context_length=65536, name=MODEL)
    neuron = NeuronServer(work, models, "n1", f'default_models = ["file:{MODEL}"]\n',
                          **FLEET_NEURON)
    neuron.start()
    neuron.wait_ready()
    proxy = FaultProxy(neuron.url)
    gw = GatewayServer(work, {"n1": proxy.url}, {"models": [{"id": MODEL}]},
                       gateway={"poll_interval_secs": 0.2, "read_timeout_secs": 10},
                       entitlements={"entitlements": {"require_auth": True,
                                                      "keys": list(KEYS.values())}})
    gw.start()
    try:
        gw.wait_ready()
        yield Fleet(neuron, proxy, gw)
    finally:
        proxy.release()
        gw.kill()
        neuron.kill()
        proxy.close()


def stream(fleet: Fleet, account: str, path: str, body: dict, cut: int = 0
           ) -> list[tuple[str | None, object]]:
    """POST a streaming `body` with `account`'s key, `cut` the neuron's reply after that
    many events (0: not at all); (event name, data) of what the client got."""
    fleet.proxy.set(Cut(after_events=cut) if cut else None)
    key = KEYS[account]["key"]
    headers = {"Authorization": f"Bearer {key}", "x-api-key": key,
               "anthropic-version": "2023-06-01"}
    try:
        with requests.post(fleet.gw.url + path, json={"model": MODEL, "stream": True, **body},
                           headers=headers, stream=True, timeout=(5, 30)) as r:
            assert r.status_code == 200, r.text
            return list(parse_sse(r.iter_lines()))
    finally:
        fleet.proxy.set(None)


def parse_sse(lines: Iterator[bytes]) -> Iterator[tuple[str | None, object]]:
    name = None
    for line in lines:
        if line.startswith(b"event: "):
            name = line[7:].decode()
        elif line.startswith(b"data: "):
            data = line[6:].decode()
            yield name, data if data == "[DONE]" else json.loads(data)
            name = None


MSG = [{"role": "user", "content": "Hi"}]


def test_an_answer_that_writes_the_end_marker_is_billed_in_full(fleet):
    events = stream(fleet, "capped", "/v1/chat/completions",
                    {"messages": MSG, "max_tokens": CAP + 20})
    # The client got the whole answer, its usage and the real end, marker and all.
    text = "".join(d["choices"][0]["delta"].get("content") or "" for _, d in events
                   if isinstance(d, dict) and d.get("choices"))
    assert text.startswith("data: [DONE]? moredata: [DONE]?"), text[:80]
    assert events[-1] == (None, "[DONE]")
    usage = next(d["usage"] for _, d in events if isinstance(d, dict) and d.get("usage"))
    # It asked for more than its key had left: the bound it was sent was clamped to that.
    assert 0 < usage["completion_tokens"] <= CAP
    # Billed what the neuron reported, not nothing at the first marker: the cap is spent.
    assert fleet.billed("capped") == (usage["prompt_tokens"], usage["completion_tokens"])
    r = requests.post(fleet.gw.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": "Bearer sk-capped"},
                      json={"model": MODEL, "messages": MSG, "max_tokens": 4})
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "insufficient_quota"


def _openai_text(events: list) -> int:
    return sum(1 for _, d in events if isinstance(d, dict) and d.get("choices")
               and d["choices"][0]["delta"].get("content"))


def _anthropic_text(events: list) -> int:
    return sum(1 for name, _ in events if name == "content_block_delta")


def _responses_text(events: list) -> int:
    return sum(1 for name, _ in events if name == "response.output_text.delta")


DIALECTS = {
    # account: (path, body, content events the client saw, how the stream ends)
    "openai": ("/v1/chat/completions", {"messages": MSG, "max_tokens": LONG}, _openai_text,
               lambda name, d: isinstance(d, dict) and set(d) == {"error"}),
    "anthropic": ("/v1/messages", {"messages": MSG, "max_tokens": LONG}, _anthropic_text,
                  lambda name, d: name == "error"),
    "responses": ("/v1/responses", {"input": "Hi", "max_output_tokens": LONG},
                  _responses_text, lambda name, d: name == "response.failed"),
}


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_a_stream_cut_mid_way_is_billed_what_was_relayed(fleet, dialect):
    path, body, content, failed = DIALECTS[dialect]
    events = stream(fleet, dialect, path, body, cut=8)  # the neuron dies after 8 events
    assert failed(*events[-1]), events[-3:]  # the client knows the answer is cut
    seen = content(events)
    assert seen >= 2, events
    # No usage came: the prompt (from the neuron's first chunk) and a token a content
    # event are billed, never nothing.
    prompt, completion = fleet.billed(dialect)
    assert prompt > 0 and completion >= seen, (prompt, completion, seen)


def test_a_stream_ended_by_an_unload_is_billed_what_was_relayed(fleet):
    key = {"Authorization": f"Bearer {KEYS['unload']['key']}"}
    seen = 0
    with requests.post(fleet.gw.url + "/v1/chat/completions", headers=key, stream=True,
                       timeout=(5, 30), json={"model": MODEL, "messages": MSG,
                                              "stream": True, "max_tokens": LONG}) as r:
        events = []
        for _, data in parse_sse(r.iter_lines()):
            events.append(data)
            if isinstance(data, dict) and data.get("choices") and \
                    data["choices"][0]["delta"].get("content"):
                seen += 1
                if seen == 3:  # an operator (or an eviction) unloads the model under it
                    u = fleet.neuron.http.post(fleet.neuron.url + "/models/unload",
                                               json={"model_id": f"file:{MODEL}"}, timeout=30)
                    assert u.status_code == 200, u.text
    assert any(isinstance(d, dict) and "error" in d for d in events), events[-3:]
    prompt, completion = fleet.billed("unload")
    assert prompt > 0 and completion >= seen, (prompt, completion, seen)
    fleet.neuron.load(f"file:{MODEL}")
    wait_for(lambda: fleet.gw.listing("sk-openai")[MODEL]["loaded"], f"{MODEL} loaded", 20,
             ignore=SERVICE_ERRORS)


def test_a_stream_killed_at_the_graceful_timeout_is_billed(neuron_factory, gateway_factory,
                                                           tmp_path):
    """A gateway worker stopping (a reload, a restart) waits graceful_timeout for its open
    requests, then gevent kills their greenlets: GreenletExit is raised inside the relay,
    and gunicorn closes the reply. Here the WSGI app is driven as gunicorn drives it."""
    from gevent import GreenletExit
    from werkzeug.test import EnvironBuilder

    from cortex.gateway.config import EntitlementsSection, KeyEntry, ModelEntry

    n = neuron_factory(n_ctx=65536)
    n.load("file:tiny-long")
    keys = EntitlementsSection(require_auth=True, store=f"sqlite://{tmp_path}/spend.db",
                               keys=[KeyEntry(key="sk-kill", account_id="kill", key_id="kill")])
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-long")], entitlements=keys)
    environ = EnvironBuilder(path="/v1/chat/completions", method="POST",
                             headers={"Authorization": "Bearer sk-kill"},
                             json={"model": "tiny-long", "messages": MSG, "stream": True,
                                   "max_tokens": LONG}).get_environ()
    reply = gw.app.wsgi_app(environ, lambda status, headers: None)
    body, relayed = iter(reply), b""
    while relayed.count(b'"delta":{"content"') < 3:  # the role chunk, then some content
        relayed += next(body)
    with pytest.raises(GreenletExit):
        body.throw(GreenletExit)  # gevent's kill, inside the relay's read
    reply.close()  # gunicorn's finally
    assert gw.gw.auth.store.total("kill") >= 4  # the prompt, and three content events at least


def test_a_reply_the_server_never_closes_is_settled_once_when_dropped():
    # werkzeug's server skips close() when the client resets the connection as it drains
    # the request; the bill must not depend on it.
    import gc

    from cortex.gateway.reply import Closing

    settled = []
    body = Closing(iter([b"data: 1\n\n"]), lambda: settled.append(1))
    next(iter(body))
    del body
    gc.collect()
    assert settled == [1]
    closed = Closing([b"x"], lambda: settled.append(2))
    closed.close()
    del closed
    gc.collect()
    assert settled == [1, 2]
