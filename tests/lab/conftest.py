"""The lab fleet (lab/lab.sh): three systemd hosts that site.yml deploys to over SSH."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GATEWAY = "http://10.213.0.21:31313"
CLIENT_KEY = "lab-client-key"  # inventories/lab/group_vars/gateways.yml


def lab(*args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "lab" / "lab.sh"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=check)


def playbook(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1")
    r = subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventories/lab", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
                       check=False)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    return r


def changed_tasks(output: str) -> list[str]:
    """'TASK name: host' for each task that reported a change (to say why a rerun changed)."""
    found, task = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: ["):
            found.append(f"{task}: {line.split('[', 1)[1].split(']', 1)[0]}")
    return found


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines → {host: {ok, changed, failed, ...}}."""
    hosts = {}
    for m in re.finditer(r"^(\S+)\s+:\s+(.*)$", output.split("PLAY RECAP")[-1], re.M):
        hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return hosts


@pytest.fixture(scope="session")
def fleet():
    """The lab, up, with site.yml applied once. Left as it was found."""
    was_up = lab("status", check=False).returncode == 0
    up = lab("up", check=False)
    if up.returncode == 2:
        reason = f"the lab cannot start on this machine: {up.stderr.strip()[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    assert up.returncode == 0, up.stdout + up.stderr
    subprocess.run(["make", "-s", "collection"], cwd=ROOT, check=True)
    first = playbook("site.yml")
    yield first
    if not was_up:
        lab("down", check=False)
