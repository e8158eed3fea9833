"""`neuron serve` and `cortex serve` as real processes, configured as a deployment is.

Each service runs in its own process group (so kill -9 or SIGSTOP reaches the gunicorn
master and its workers at once), from the TOML files a deployment writes (built as dicts,
cortex.testing.tomlfile), logging to a file (a pipe nobody reads would stall a chatty
service), with the hub out of reach (cortex.testing.hub). For the fault tests, the soak
benchmark, `neuron_process` and ansible-test's integration fleet.

Only the services' public HTTP APIs and command lines are used: nothing here imports the
gateway or the neuron.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess  # nosec B404 - runs this package's own neuron/cortex binaries
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from cortex.testing import tomlfile
from cortex.testing.hub import offline_env
from cortex.testing.ports import free_port
from cortex.testing.waiting import wait_for

BIN = Path(sys.executable).parent
TOKEN = "faults-neuron-token"  # nosec B105 - the test fleets' own gateway-neuron token
ADMIN_KEY = "faults-admin"  # nosec B105 - the test fleets' own admin key
# What a poll of a service that is starting, stopping or paused may raise: "not yet".
SERVICE_ERRORS = (requests.RequestException, ValueError, KeyError)
# Engine settings of the fault tests' and the soak's neurons. A fixed memory size (not this
# machine's MemAvailable, which moves between polls) makes placement ties really tie and go
# by node name.
FLEET_NEURON = {"cpu_memory_mb": 4096, "n_ctx": 65536, "n_threads": 1}

TomlPart = Mapping[str, Any] | str | None


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


# -- config files --------------------------------------------------------------------------
def neuron_toml(port: int, models_dir: Path, cache_dir: Path, *, token: str = "",
                **settings: Any) -> dict[str, Any]:
    """neuron.toml for a neuron on 127.0.0.1:`port`; `settings`: more of its keys."""
    base = {"listen": f"127.0.0.1:{port}", "models_dir": str(models_dir),
            "cache_dir": str(cache_dir)}
    if token:
        base["auth_token"] = token
    return tomlfile.merge(base, settings)


def gateway_toml(port: int, metrics_port: int, state_dir: Path, neurons: Mapping[str, str], *,
                 token: str = "", admin_keys: Sequence[str] = (), workers: int = 1,
                 models_config: str = "models.toml", **gateway: Any) -> dict[str, Any]:
    """cortex.toml for a gateway on 127.0.0.1:`port` over `neurons` (name: URL);
    `gateway`: more [gateway] keys."""
    section = {"listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics_port}",
               "workers": workers, "state_dir": str(state_dir), **gateway}
    if token:
        section["neuron_token"] = token
    if admin_keys:
        section["admin_keys"] = list(admin_keys)
    return {"models_config": models_config, "gateway": section,
            "neurons": [{"name": n, "endpoint": url} for n, url in neurons.items()]}


# -- processes -----------------------------------------------------------------------------
class Service:
    """One service started from the command line, in its own process group."""

    def __init__(self, name: str, argv: list[str], log: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.env = dict(env) if env is not None else offline_env()
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
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=self.env)
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

    crash = kill  # the name the neuron_process tests use

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

    def wait(self, ready: Callable[[], Any], what: str, timeout: float) -> Any:
        """wait_for `ready`, giving up at once if the service exits; the log on failure."""
        def check() -> Any:
            if not self.running:
                raise Exited(f"{self.name} exited:\n{self.log_tail()}")
            return ready()

        try:
            return wait_for(check, f"{self.name}: {what}", timeout, 0.05, ignore=SERVICE_ERRORS)
        except Exited:
            raise
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None


class Exited(AssertionError):
    """A service exited while a test waited on it."""


class NeuronServer(Service):
    """`neuron serve` on a loopback port of its own (with `token` as its auth_token).

    `extra` and `settings`: neuron.toml keys over the base (listen, models_dir, cache_dir,
    auth_token); `extra` may be TOML text."""

    def __init__(self, workdir: Path, models_dir: Path, name: str = "n1", extra: TomlPart = "",
                 *, token: str = TOKEN, env: Mapping[str, str] | None = None,
                 **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / f"{name}.toml"
        self.models_dir = models_dir
        self.cache_dir = workdir / f"{name}-cache"
        self.base = neuron_toml(self.port, models_dir, self.cache_dir, token=token, **settings)
        self.configure(extra)
        super().__init__(name, [str(BIN / "neuron"), "serve", "--config", str(self.config)],
                         workdir / f"{name}.log", env)
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def configure(self, extra: TomlPart = "") -> None:
        """Rewrite neuron.toml (read at the next start): the base with `extra` over it."""
        tomlfile.write(self.config, tomlfile.merge(self.base, extra))

    def ready(self) -> bool:
        h = self.health()
        return h["activation"]["state"] == "ready"

    def wait_ready(self, timeout: float = 60) -> NeuronServer:
        self.wait(self.ready, "ready", timeout)
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
    """`cortex serve` over the given neurons (name: URL), from a cortex.toml and models.toml.

    `models`: models.toml; `gateway`: [gateway] keys over the base; `entitlements`: more of
    cortex.toml (its [entitlements]); each a dict or TOML text."""

    def __init__(self, workdir: Path, neurons: Mapping[str, str], models: TomlPart = "", *,
                 name: str = "gw", workers: int = 1, gateway: TomlPart = "",
                 entitlements: TomlPart = "", token: str = TOKEN,
                 admin_keys: Sequence[str] = (ADMIN_KEY,),
                 env: Mapping[str, str] | None = None) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.neurons = dict(neurons)
        d = workdir / name
        d.mkdir(parents=True, exist_ok=True)
        tomlfile.write(d / "models.toml", tomlfile.merge({}, models))
        section = tomlfile.merge({}, gateway)
        text = gateway_toml(self.port, self.metrics_port, d / "state", self.neurons,
                            token=token, admin_keys=admin_keys, workers=workers, **section)
        self.config = tomlfile.write(d / "cortex.toml", tomlfile.merge(text, entitlements))
        super().__init__(name, [str(BIN / "cortex"), "serve", "--config", str(self.config)],
                         d / "gateway.log", env)

    def wait_ready(self, healthy: int | None = None, timeout: float = 60) -> GatewayServer:
        want = len(self.neurons) if healthy is None else healthy
        self.wait(lambda: self.health()["nodes"]["healthy"] == want,
                  f"{want} healthy neurons", timeout)
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


def _expect_ok(r: requests.Response) -> None:
    if r.status_code != 200:
        raise AssertionError(f"{r.request.method} {r.url}: {r.status_code} {r.text}")
