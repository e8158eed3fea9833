"""ansible-test for helexa.cortex from a checkout, offline: sanity, units and integration.

    .venv/bin/python scripts/run_ansible_test.py sanity|units|integration [ansible-test args]

ansible-test wants the collection in a real directory named .../ansible_collections/helexa/
cortex, so the working tree (git's tracked and not-ignored files) is staged at
.cache/ansible-test/ansible_collections/helexa/cortex and ansible-test runs there (its results
land in that copy's tests/output).

sanity   --venv: each sanity test gets the virtual environment and pinned requirements
         ansible-test defines (installed from the package registry on first use, kept in
         ~/.ansible/test/venv). The pip bootstrap it would download comes from
         scripts/get_pip_offline.py instead. pylint and pep8 (Ansible's house style) skip
         files/agents and bench: they are the agents' Python project and its benchmarks,
         linted by ruff (`make lint`) and tested by `make pytest`; every other sanity test
         covers them.
units    --local with this interpreter (the agents package is installed in it: the tests
         serve the real neuron and gateway apps).
integration
         --local, against a real neuron (`neuron serve`) and gateway (`cortex serve`) started
         here on loopback ports; their URLs and tokens reach the targets through
         tests/integration/integration_config.yml in the staged copy.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".cache" / "ansible-test" / "ansible_collections" / "helexa" / "cortex"
BIN = Path(sys.executable).parent
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# Not Ansible content: the agents' Python project and its benchmarks (ruff, make pytest).
NOT_ANSIBLE_PYTHON = ("files/agents/", "bench/")
NEURON_TOKEN = "integration-neuron-token"
ADMIN_KEY = "integration-admin-key"


def log(msg: str) -> None:
    print(f"run_ansible_test.py: {msg}", file=sys.stderr, flush=True)


def stage() -> Path:
    """Copy the working tree into STAGE (keeping ansible-test's tests/output there)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    STAGE.mkdir(parents=True, exist_ok=True)
    for child in STAGE.iterdir():
        if child.name == ".git":
            continue
        if child.name == "tests" and child.is_dir():
            for sub in child.iterdir():
                if sub.name != "output":
                    remove(sub)
        else:
            remove(child)
    copied = 0
    for rel in filter(None, listed):
        src = ROOT / rel
        if not (src.exists() or src.is_symlink()):
            continue  # deleted in the working tree
        dst = STAGE / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst, follow_symlinks=False)
        copied += 1
    # Its own (empty) repository: ansible-test lists a git work tree's files with git, and
    # would otherwise find this checkout's, where .cache/ is ignored. Here every file is
    # untracked, so it sees exactly the staged files, minus what .gitignore leaves out.
    if not (STAGE / ".git").exists():
        subprocess.run(["git", "init", "-q", str(STAGE)], check=True)
    (STAGE / ".git" / "info" / "exclude").write_text("tests/output/\n")  # ansible-test's own
    log(f"staged {copied} files at {STAGE.relative_to(ROOT)}")
    return STAGE


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def install_get_pip() -> None:
    """Put the offline get-pip stand-in where ansible-test looks for its cached download."""
    from ansible_test._internal.python_requirements import get_venv_packages

    version = get_venv_packages(SimpleNamespace(version=PYTHON_VERSION))["pip"]
    cache = Path.home() / ".ansible" / "test" / "cache"
    target = cache / f"get_pip_{version.replace('.', '_')}.py"
    if target.exists() and target.stat().st_size > 100_000:
        return  # a real get-pip.py (pip inside, MBs; downloaded where that works): use it
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "scripts" / "get_pip_offline.py", target)


def ansible_test(*args: str) -> int:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(BIN / "ansible-test"), *args]
    log(" ".join(cmd))
    return subprocess.run(cmd, cwd=STAGE, env=env, check=False).returncode


def sanity(extra: list[str]) -> int:
    install_get_pip()
    common = ["sanity", "--venv", "--python", PYTHON_VERSION, "--requirements", "--color", "no"]
    style = ["--test", "pylint", "--test", "pep8"]
    excludes = [arg for path in NOT_ANSIBLE_PYTHON for arg in ("--exclude", path)]
    rc = ansible_test(*common, "--skip-test", "pylint", "--skip-test", "pep8", *extra)
    return ansible_test(*common, *style, *excludes, *extra) or rc


def units(extra: list[str]) -> int:
    return ansible_test("units", "--local", "--python-interpreter", sys.executable,
                        "--color", "no", *extra)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.load(resp)


class Fleet:
    """One neuron and one gateway over it, real processes on 127.0.0.1."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.neuron_url = self.gateway_url = ""

    def start(self) -> dict:
        from cortex.testing.tiny_gguf import SCRIPTS, build_tiny_gguf

        models = self.work / "models"
        models.mkdir()
        build_tiny_gguf(models / "tiny-hello.gguf", script=SCRIPTS["hello"][0], name="tiny-hello")
        quants = models / "tiny-quants"
        quants.mkdir()
        for ftype in ("F16", "Q8_0"):
            build_tiny_gguf(quants / f"tiny-quants.{ftype}.gguf", script=SCRIPTS["hello"][0],
                            ftype=ftype, name="tiny-quants")
        # A generation that runs for seconds (65k tokens), to hold a request in flight.
        build_tiny_gguf(models / "tiny-long.gguf", script=SCRIPTS["loop"][0], loop=True,
                        context_length=65536, name="tiny-long")

        port = free_port()
        self.neuron_url = f"http://127.0.0.1:{port}"
        (self.work / "neuron.toml").write_text(
            f'listen = "127.0.0.1:{port}"\nmodels_dir = "{models}"\n'
            f'cache_dir = "{self.work / "cache"}"\nauth_token = "{NEURON_TOKEN}"\n'
            f"n_ctx = 65536\nn_threads = 2\n[hf]\noffline = true\n")
        self.spawn("neuron", "serve", "--config", str(self.work / "neuron.toml"))
        self.wait("neuron", lambda: get_json(self.neuron_url + "/health")["activation"]["state"]
                  == "ready")

        port, metrics_port = free_port(), free_port()
        self.gateway_url = f"http://127.0.0.1:{port}"
        (self.work / "models.toml").write_text("")
        (self.work / "cortex.toml").write_text(
            f'models_config = "models.toml"\n[gateway]\nlisten = "127.0.0.1:{port}"\n'
            f'metrics_listen = "127.0.0.1:{metrics_port}"\nworkers = 2\n'
            f'poll_interval_secs = 0.2\nstate_dir = "{self.work / "gw-state"}"\n'
            f'neuron_token = "{NEURON_TOKEN}"\nadmin_keys = ["{ADMIN_KEY}"]\n'
            f'[[neurons]]\nname = "n1"\nendpoint = "{self.neuron_url}"\n')
        self.spawn("cortex", "serve", "--config", str(self.work / "cortex.toml"))
        self.wait("gateway", lambda: get_json(self.gateway_url + "/health")["nodes"]["healthy"]
                  == 1)
        return {
            "cortex_neuron_url": self.neuron_url,
            "cortex_neuron_token": NEURON_TOKEN,
            "cortex_gateway_url": self.gateway_url,
            "cortex_gateway_admin_key": ADMIN_KEY,
            "cortex_gateway_node": "n1",
        }

    def spawn(self, exe: str, *args: str) -> None:
        logfile = (self.work / f"{exe}.log").open("wb")
        env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="1",
                   HF_HUB_DISABLE_TELEMETRY="1")
        proc = subprocess.Popen([str(BIN / exe), *args], stdout=logfile,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append((exe, proc))

    def wait(self, what: str, ready, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    log(f"{what} is up")
                    return
            except (OSError, urllib.error.URLError, KeyError, ValueError):
                pass
            for exe, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{exe} exited ({proc.returncode}):\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready in {timeout}s:\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.work.glob("*.log")))

    def stop(self) -> None:
        for _exe, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _exe, proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def integration(extra: list[str]) -> int:
    # The fleet runs in its own sessions: a TERM to this script ends it through `finally`.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="cortex-integration-") as work:
        fleet = Fleet(Path(work))
        try:
            config = fleet.start()
            (STAGE / "tests" / "integration" / "integration_config.yml").write_text(
                json.dumps(config, indent=2) + "\n")
            rc = ansible_test("integration", "--local", "--python-interpreter", sys.executable,
                              "--color", "no", *extra)
            if rc:
                log("the fleet's logs:\n" + fleet.logs())
            return rc
        finally:
            fleet.stop()


def main(argv: list[str]) -> int:
    commands = {"sanity": sanity, "units": units, "integration": integration}
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    # One run at a time per checkout: they share the staged copy (and ansible-test's venvs).
    lock_path = ROOT / ".cache" / "ansible-test" / "run.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another run from this checkout to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        stage()
        return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
