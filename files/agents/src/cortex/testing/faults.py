"""Real services and a misbehaving network, for the fault tests and the soak benchmark.

`NeuronServer` and `GatewayServer` run `neuron serve` and `cortex serve` as real processes,
each in its own process group (so kill -9 or SIGSTOP reaches the gunicorn master and its
workers at once), configured by the TOML files a deployment writes and logging to files
(a pipe nobody reads would stall a chatty service). `FaultProxy` sits on loopback between a
gateway and a neuron and, on command, delays, stalls, cuts or replaces the neuron's replies
to inference requests while the gateway's `/health` and `/models` polls pass untouched.

Only the services' public HTTP APIs and command lines are used: nothing here imports the
gateway or the neuron.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess  # nosec B404 - runs this package's own neuron/cortex binaries
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

BIN = Path(sys.executable).parent
TOKEN = "faults-neuron-token"  # nosec B105 - the test fleets' own gateway-neuron token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], Any], timeout: float, what: str = "condition",
               interval: float = 0.05) -> Any:
    """Poll `cond` until it returns something truthy (returned); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = cond()
        except (requests.RequestException, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s (last: {last!r})")
        time.sleep(interval)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of `pid` (gunicorn's workers of a master)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d.name))
    return sorted(out)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` in Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, rest = head.partition("{")
        if sample != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


# -- processes -----------------------------------------------------------------------------
class Service:
    """One service started from the command line, in its own process group."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.http = requests.Session()

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} is running")
        with self.log.open("ab") as out:
            out.write(f"\n--- start {self.starts + 1} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.argv, stdout=out,  # nosec B603 - our argv
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """The master and its workers."""
        if not self.running:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def signal(self, sig: int) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9 of the master and every worker, as a crash or the OOM killer would."""
        if self.proc is None or self.proc.returncode is not None:
            return  # reaped: its number may belong to someone else now
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 30) -> None:
        """A graceful stop (SIGTERM to the master), then kill -9 of whatever is left."""
        self.http.close()  # an idle keep-alive connection would hold a worker's exit
        if not self.running:
            return
        self.resume()  # a stopped process cannot handle SIGTERM
        self.proc.terminate()
        deadline = time.monotonic() + timeout
        # Wait for the master to exit without reaping it, so that its process group can
        # still be named safely: a worker it left behind would keep the port.
        while (os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
               is None and time.monotonic() < deadline):
            time.sleep(0.05)
        self.kill()

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def _wait(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except (requests.RequestException, ValueError, KeyError):
                pass
            if not self.running:
                raise AssertionError(f"{self.name} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready in {timeout:g} s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.05)


class NeuronServer(Service):
    """`neuron serve` on a loopback port of its own, with the fleet's token."""

    def __init__(self, workdir: Path, models_dir: Path, name: str = "n1", extra: str = "",
                 *, cpu_memory_mb: int = 4096, n_ctx: int = 65536) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / f"{name}.toml"
        self.models_dir = models_dir
        self.cache_dir = workdir / f"{name}-cache"
        # A fixed memory size (not this machine's MemAvailable, which moves between polls)
        # makes placement ties really tie and go by node name.
        self.base = (f'listen = "127.0.0.1:{self.port}"\nmodels_dir = "{models_dir}"\n'
                     f'cache_dir = "{self.cache_dir}"\nauth_token = "{TOKEN}"\n'
                     f"cpu_memory_mb = {cpu_memory_mb}\nn_ctx = {n_ctx}\nn_threads = 1\n")
        self.configure(extra)
        super().__init__(name, [str(BIN / "neuron"), "serve", "--config", str(self.config)],
                         workdir / f"{name}.log")
        self.http.headers["Authorization"] = f"Bearer {TOKEN}"

    def configure(self, extra: str = "") -> None:
        """Rewrite neuron.toml (read at the next start). Top-level keys, then any tables."""
        self.config.write_text(self.base + extra + "\n")

    def ready(self) -> bool:
        h = self.health()
        return h["activation"]["state"] == "ready"

    def wait_ready(self, timeout: float = 60) -> NeuronServer:
        self._wait(self.ready, timeout)
        return self

    def restart(self, timeout: float = 60) -> NeuronServer:
        self.start()
        return self.wait_ready(timeout)

    # -- the neuron's HTTP API ---------------------------------------------------------
    def get(self, path: str, timeout: float = 10) -> requests.Response:
        return self.http.get(self.url + path, timeout=timeout)

    def health(self) -> dict[str, Any]:
        return self.get("/health", timeout=5).json()

    def models(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.get("/models").json()}

    def loaded(self) -> set[str]:
        return {m["id"] for m in self.health()["models"]}

    def busy(self) -> int:
        """Requests running or queued on any model of this neuron."""
        return sum(m["in_flight"] + m["queue_depth"] for m in self.health()["models"])

    def load(self, model_id: str) -> dict[str, Any]:
        r = self.http.post(self.url + "/models/load", json={"model_id": model_id}, timeout=60)
        _expect_ok(r)
        return r.json()

    def metrics(self) -> str:
        return self.get("/metrics").text

    def loads(self, model_id: str, result: str = "ok") -> int:
        """Loads of `model_id` this process has done (its neuron_model_load_seconds count)."""
        return int(metric(self.metrics(), "neuron_model_load_seconds_count", model=model_id,
                          result=result))


class GatewayServer(Service):
    """`cortex serve` over the given neurons, from a cortex.toml and models.toml."""

    def __init__(self, workdir: Path, neurons: dict[str, str], models_toml: str, *,
                 name: str = "gw", workers: int = 1, gateway: str = "",
                 entitlements: str = "") -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.neurons = neurons
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "models.toml").write_text(models_toml)
        text = (f'models_config = "models.toml"\n[gateway]\nlisten = "127.0.0.1:{self.port}"\n'
                f'metrics_listen = "127.0.0.1:{self.metrics_port}"\nworkers = {workers}\n'
                f'state_dir = "{d / "state"}"\nneuron_token = "{TOKEN}"\n'
                f'admin_keys = ["faults-admin"]\n{gateway}\n{entitlements}\n')
        for n, url in neurons.items():
            text += f'[[neurons]]\nname = "{n}"\nendpoint = "{url}"\n'
        self.config = d / "cortex.toml"
        self.config.write_text(text)
        super().__init__(name, [str(BIN / "cortex"), "serve", "--config", str(self.config)],
                         d / "gateway.log")

    def wait_ready(self, healthy: int | None = None, timeout: float = 60) -> GatewayServer:
        want = len(self.neurons) if healthy is None else healthy
        self._wait(lambda: self.health()["nodes"]["healthy"] == want, timeout)
        return self

    def restart(self, timeout: float = 60) -> GatewayServer:
        self.start()
        return self.wait_ready(timeout=timeout)

    def health(self) -> dict[str, Any]:
        return self.http.get(self.url + "/health", timeout=5).json()

    def listing(self, key: str) -> dict[str, dict[str, Any]]:
        r = self.http.get(self.url + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                          timeout=10)
        _expect_ok(r)
        return {m["id"]: m for m in r.json()["data"]}

    def metrics(self) -> str:
        return self.http.get(self.metrics_url, timeout=10).text


@contextlib.contextmanager
def started(*services: Service) -> Iterator[None]:
    """Start services together (their start-ups overlap) and stop them all at the end."""
    try:
        for s in services:
            s.start()
        yield
    finally:
        for s in services:
            s.stop()


# -- the fault proxy -----------------------------------------------------------------------
@dataclass
class Delay:
    """Hold the request this long before passing it on (a neuron slow to answer)."""

    seconds: float


@dataclass
class Stall:
    """Pass the reply up to a point (`after_bytes` of its body, or its first `after_events`
    whole events), then send nothing more for `seconds`."""

    seconds: float
    after_bytes: int = 0
    after_events: int = 0


@dataclass
class Cut:
    """Pass the reply up to a point (as Stall), then close the connection (a crash)."""

    after_bytes: int = 0
    after_events: int = 0


@dataclass
class Reply:
    """Answer with these raw bytes and close, without asking the neuron."""

    raw: bytes


def http_reply(status: int, body: bytes, content_type: str = "application/json",
               length: int | None = None) -> Reply:
    """An HTTP/1.1 reply; `length` may claim more bytes than `body` has (a truncated reply)."""
    head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            "Connection: close\r\n\r\n")
    return Reply(head.encode() + body)


def inference_request(method: str, path: str) -> bool:
    """What the proxy's faults apply to by default: inference, not the gateway's polls."""
    return method == "POST" and path.startswith("/v1/")


Fault = Delay | Stall | Cut | Reply


class FaultProxy:
    """A loopback TCP proxy in front of one neuron that misbehaves on command.

    Each request gets its own upstream connection and goes out with `Connection: close`,
    so the proxy never has to frame a reply: it relays bytes until the neuron closes.
    Faults apply to requests `match` selects (inference by default); `requests` counts
    those, `hits` the ones a fault met, and `holding` how many are held right now (to wait
    on, not sleep).
    """

    def __init__(self, upstream: str,
                 match: Callable[[str, str], bool] = inference_request) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.match = match
        self.fault: Fault | None = None
        self.requests = 0  # requests `match` selected, faulted or not
        self.hits = 0  # of which a fault met
        self.holding = 0
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    def set(self, fault: Fault | None) -> None:
        self._released.clear()
        self.fault = fault

    def release(self) -> None:
        """Clear the fault and let every held request go on at once."""
        self.fault = None
        self._released.set()

    def close(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self._sock.close()

    # -- plumbing ----------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            request = _read_request(client)
            if request is None:
                return
            method, path, data = request
            matched = self.match(method, path)
            fault = self.fault if matched else None
            with self._lock:
                self.requests += matched
                self.hits += fault is not None
            if isinstance(fault, Reply):
                client.sendall(fault.raw)
                return
            if isinstance(fault, Delay):
                self._hold(fault.seconds)
            upstream = socket.create_connection(self.upstream, timeout=600)
            upstream.sendall(data)
            self._relay(upstream, client, fault)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()

    def _hold(self, seconds: float) -> None:
        with self._lock:
            self.holding += 1
        try:
            self._released.wait(seconds)
        finally:
            with self._lock:
                self.holding -= 1

    def _relay(self, upstream: socket.socket, client: socket.socket, fault: Fault | None
               ) -> None:
        cut = fault if isinstance(fault, Stall | Cut) else None
        head: bytes | None = b""  # the reply's head, until its end is seen
        body = b""  # the body so far, until the point to stop at is in it
        sent = 0
        while data := upstream.recv(65536):
            if cut is None:
                client.sendall(data)
                continue
            if head is not None:
                head += data
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                client.sendall(head[:end + 4])
                data, head = head[end + 4:], None
            body += data
            at = _stop_at(body, cut)
            upto = len(body) if at is None else at
            if upto > sent:
                client.sendall(body[sent:upto])
                sent = upto
            if at is not None:
                if isinstance(cut, Stall):
                    self._hold(cut.seconds)
                return


# The end of one SSE event and of the HTTP chunk that carries it (the neuron writes one
# event a chunk): stopping there leaves no event, and no chunk, half sent.
EVENT_END = b"\n\n\r\n"


def _stop_at(body: bytes, cut: Stall | Cut) -> int | None:
    if cut.after_events:
        pos = 0
        for _ in range(cut.after_events):
            i = body.find(EVENT_END, pos)
            if i < 0:
                return None
            pos = i + len(EVENT_END)
        return pos
    return cut.after_bytes if len(body) >= cut.after_bytes else None


def _read_request(sock: socket.socket) -> tuple[str, str, bytes] | None:
    """One request off `sock`, re-encoded with `Connection: close`."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    kept, length = [lines[0]], 0
    for line in lines[1:]:
        name = line.partition(":")[0].strip().lower()
        if name == "content-length":
            length = int(line.partition(":")[2])
        if name not in ("connection", "keep-alive"):
            kept.append(line)
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            return None
        body += data
    kept.append("Connection: close")
    return method, path, ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1") + body


def _expect_ok(r: requests.Response) -> None:
    if r.status_code != 200:
        raise AssertionError(f"{r.request.method} {r.url}: {r.status_code} {r.text}")
