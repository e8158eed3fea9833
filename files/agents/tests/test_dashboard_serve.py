"""The dashboard under `cortex serve` (gunicorn, two gevent workers): many open event
streams at once, each a greenlet, and the gateway still answers everything else."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest
import requests

from cortex.gateway import config as gw_config
from test_gateway_serve import BIN, write_config

STREAMS = 24


@pytest.fixture
def served(served_proc):
    return served_proc[0]


def wait_until(check, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def served_proc(neuron_process, tmp_path):
    n1 = neuron_process()
    cfg = write_config(tmp_path, {"n1": n1.url}, '[[models]]\nid = "tiny-hello"\n')
    c = gw_config.load(cfg)[0]
    proc = subprocess.Popen([str(BIN / "cortex"), "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = "http://" + c.gateway.listen
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(base + "/health", timeout=2).json()["nodes"]["healthy"] == 1:
                break
        except requests.RequestException:
            pass
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield base, proc
    proc.terminate()
    proc.wait(30)


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
    base = served
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


def test_a_reload_ends_open_streams_so_pages_reconnect(served_proc):
    base, proc = served_proc
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
    wait_until(lambda: got, "the first stream's hello")
    old = got["hello"]["worker"]["pid"]
    proc.send_signal(signal.SIGHUP)  # `systemctl reload`: new workers, old ones stop
    # The old worker ends the stream itself, well before gunicorn's 30 s graceful timeout.
    assert ended.wait(20), "the stream held the old worker"

    def new_worker() -> bool:  # the old one may still accept for a moment (and end at once)
        with requests.get(base + "/ui/events", stream=True, timeout=30) as r:
            return read_events(r, {"hello"})["hello"]["worker"]["pid"] != old

    wait_until(new_worker, "a stream from a new worker")
