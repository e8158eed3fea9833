"""The dashboard under `cortex serve` (gunicorn, two gevent workers): many open event
streams at once, each a greenlet, and the gateway still answers everything else."""

from __future__ import annotations

import json
import signal
import threading

import pytest
import requests

from cortex.testing.waiting import wait_for

STREAMS = 24


@pytest.fixture
def served(neuron_process, gateway_process):
    """`cortex serve` with two gevent workers over a `neuron serve` (node n1)."""
    # (All the streams come from one anonymous address: allowed as many as it opens.)
    return gateway_process({"n1": neuron_process()}, {"models": [{"id": "tiny-hello"}]},
                           admin_keys=["adm"], gateway={"poll_interval_secs": 0.5,
                                                        "ui_max_streams_per_key": STREAMS})


def read_events(r: requests.Response, want: set[str]) -> dict[str, dict]:
    got: dict[str, dict] = {}
    buf = b""
    for chunk in r.iter_content(chunk_size=None):
        buf += chunk
        *blocks, buf = buf.split(b"\n\n")
        for block in blocks:
            if block.startswith(b"event: "):
                head, _, data = block.partition(b"\ndata: ")
                got[head[7:].decode()] = json.loads(data)
        if want <= set(got):
            return got
    raise AssertionError(f"the stream ended with only {sorted(got)}")


def test_many_event_streams_under_gevent_workers(served):
    base = served.url
    assert requests.get(base + "/ui/", timeout=10).headers["Content-Security-Policy"]
    js = requests.get(base + "/ui/static/app.js", timeout=10)  # shipped as package data
    assert js.status_code == 200 and "javascript" in js.headers["Content-Type"]

    ready = threading.Barrier(STREAMS + 1, timeout=60)
    release = threading.Event()
    results: list[dict] = []
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            with requests.get(base + "/ui/events", stream=True, timeout=30) as r:
                assert r.status_code == 200
                got = read_events(r, {"hello", "state"})
                results.append(got)
                ready.wait()
                release.wait(30)  # hold the stream open while the main thread checks
        except BaseException as exc:
            errors.append(exc)
            ready.abort()

    threads = [threading.Thread(target=watch, daemon=True) for _ in range(STREAMS)]
    for t in threads:
        t.start()
    ready.wait()
    try:
        # Every stream is open and idle in its greenlet; the workers still serve the rest.
        assert requests.get(base + "/health", timeout=5).json()["nodes"]["healthy"] == 1
        models = requests.get(base + "/v1/models", timeout=5).json()["data"]
        assert [m["id"] for m in models] == ["tiny-hello"]
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert len(results) == STREAMS
    assert all([n["name"] for n in got["state"]["nodes"]] == ["n1"] for got in results)


def test_a_reload_ends_open_streams_so_pages_reconnect(served):
    base = served.url
    ended = threading.Event()
    got: dict = {}

    def watch() -> None:
        with requests.get(base + "/ui/events", stream=True, timeout=60) as r:
            chunks = r.iter_content(chunk_size=None)  # one iterator for the whole stream
            buf = b""
            for chunk in chunks:
                buf += chunk
                _, hello, rest = buf.partition(b"event: hello\ndata: ")
                if hello and b"\n\n" in rest:
                    got["hello"] = json.loads(rest.split(b"\n\n")[0])
                    break
            for _ in chunks:
                pass
        ended.set()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    wait_for(lambda: got, "the first stream's hello", 30)
    old = got["hello"]["worker"]["pid"]
    served.proc.send_signal(signal.SIGHUP)  # `systemctl reload`: new workers, old ones stop
    # The old worker ends the stream itself, well before gunicorn's 30 s graceful timeout.
    assert ended.wait(20), "the stream held the old worker"

    def new_worker() -> bool:  # the old one may still accept for a moment (and end at once)
        with requests.get(base + "/ui/events", stream=True, timeout=30) as r:
            return read_events(r, {"hello"})["hello"]["worker"]["pid"] != old

    wait_for(new_worker, "a stream from a new worker", 30)
