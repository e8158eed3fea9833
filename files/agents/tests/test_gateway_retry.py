"""When the gateway sends a request to another replica, and when it must not.

A neuron that had the request and went quiet may still be running it: the client gets a
504 and no other replica runs it a second time. A connection closed before any reply came
(a neuron restarting, a keep-alive race) is tried once more elsewhere.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from openai import OpenAI

from cortex.gateway.config import ModelEntry
from cortex.testing.waiting import wait_for

MODEL = "file:tiny-hello"


class MuteNeuron:
    """The neuron API's polls, with `MODEL` loaded and idle, over a neuron that never
    answers an inference request: it holds it (`hold`) or hangs up on it (`hang_up`)."""

    def __init__(self, mode: str) -> None:
        self.mode, self.posts, self.release = mode, 0, threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet test output
                pass

            def do_GET(self) -> None:
                body = {"/health": {"status": "ok", "drained": False, "devices": [
                            {"index": 0, "name": "cpu", "kind": "cpu", "vram_total_mb": 16000,
                             "vram_free_mb": 15000}],
                            "activation": {"state": "ready", "failed": []},
                            "models": [{"id": MODEL, "in_flight": 0, "queue_depth": 0,
                                        "last_used": 0}]},
                        "/models": [{"id": MODEL, "status": "loaded", "vram_used_mb": 100}]
                        }.get(self.path)
                data = json.dumps(body).encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.posts += 1
                if owner.mode == "hold":
                    owner.release.wait(30)
                self.close_connection = True  # no reply at all

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mute_factory():
    made: list[MuteNeuron] = []

    def make(mode: str) -> MuteNeuron:
        made.append(MuteNeuron(mode))
        return made[-1]

    yield make
    for m in made:
        m.close()


def served_requests(neuron) -> int:
    return neuron.neuron.registry.models[MODEL].scheduler.stats.requests


@pytest.mark.parametrize("mode, status", [("hold", 504), ("hang_up", 200)])
def test_a_request_a_neuron_may_be_running_is_never_sent_again(
        mute_factory, neuron, gateway_factory, mode, status):
    mute = mute_factory(mode)
    neuron.load(MODEL)
    # Both replicas idle: the tie goes by name, so "a" (the mute one) is tried first.
    # "hold" waits out the read timeout; "b"'s own answer must not (a busy machine is slow).
    gw = gateway_factory({"a": mute, "b": neuron}, [ModelEntry(id="tiny-hello")],
                         read_timeout_secs=1 if mode == "hold" else 30)
    wait_for(lambda: all(n.healthy for n in gw.gw.fleet.nodes.values()), "both nodes polled")
    r = gw.chat("tiny-hello", max_tokens=4)
    assert mute.posts == 1
    assert r.status_code == status, r.text
    if mode == "hold":
        err = r.json()["error"]
        assert err["code"] == "upstream_timeout" and "a gave no reply" in err["message"]
        assert served_requests(neuron) == 0  # not run a second time on "b"
    else:  # nothing came back on that connection: "b" answers it
        assert r.headers["X-Cortex-Node"] == "b" and served_requests(neuron) == 1


def test_the_openai_sdk_sees_a_timeout_as_a_retryable_5xx(mute_factory, gateway_factory):
    mute = mute_factory("hold")
    gw = gateway_factory({"a": mute}, [ModelEntry(id="tiny-hello")], read_timeout_secs=1)
    wait_for(lambda: gw.gw.fleet.nodes["a"].healthy, "the node polled")
    client = OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
    from openai import InternalServerError

    with pytest.raises(InternalServerError) as exc:
        client.chat.completions.create(model="tiny-hello",
                                       messages=[{"role": "user", "content": "Hi"}])
    assert exc.value.status_code == 504 and exc.value.body["code"] == "upstream_timeout"
