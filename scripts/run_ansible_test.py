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
import subprocess
import sys
import tempfile
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


def start_fleet(work: Path) -> tuple[list, dict]:
    """One neuron (`neuron serve`) and one gateway (`cortex serve`) over it, real processes
    on 127.0.0.1 (cortex.testing: the test kit), offline; and what the targets are told."""
    from cortex.testing.hub import offline_env
    from cortex.testing.model_sets import ModelSet, build_models
    from cortex.testing.processes import GatewayServer, NeuronServer

    # tiny-long: a generation that runs for seconds (65k tokens), to hold a request in flight.
    models = build_models(work / "models", ModelSet(tiny=("hello",), quants=True, long=True))
    env = offline_env(HF_HUB_OFFLINE="1")
    neuron = NeuronServer(work, models, "neuron", token=NEURON_TOKEN, env=env, n_ctx=65536,
                          n_threads=2, hf={"offline": True})
    gateway = GatewayServer(work, {"n1": neuron.url}, name="gateway", workers=2,
                            gateway={"poll_interval_secs": 0.2}, token=NEURON_TOKEN,
                            admin_keys=[ADMIN_KEY], env=env)
    services = [neuron, gateway]
    neuron.start()
    neuron.wait_ready(120)
    log("neuron is up")
    gateway.start()
    gateway.wait_ready(timeout=120)
    log("gateway is up")
    return services, {
        "cortex_neuron_url": neuron.url,
        "cortex_neuron_token": NEURON_TOKEN,
        "cortex_gateway_url": gateway.url,
        "cortex_gateway_admin_key": ADMIN_KEY,
        "cortex_gateway_node": "n1",
    }


def logs(services: list) -> str:
    return "\n".join(f"--- {s.name}\n{s.log_tail()}" for s in services)


def integration(extra: list[str]) -> int:
    # The fleet runs in its own sessions: a TERM to this script ends it through `finally`.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="cortex-integration-") as work:
        services: list = []
        try:
            services, config = start_fleet(Path(work))
            (STAGE / "tests" / "integration" / "integration_config.yml").write_text(
                json.dumps(config, indent=2) + "\n")
            rc = ansible_test("integration", "--local", "--python-interpreter", sys.executable,
                              "--color", "no", *extra)
            if rc:
                log("the fleet's logs:\n" + logs(services))
            return rc
        except AssertionError as exc:  # a service that did not start: its log is in it
            log(str(exc))
            return 1
        finally:
            for s in reversed(services):
                s.stop()


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
