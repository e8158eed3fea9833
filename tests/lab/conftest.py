"""The lab fleet (lab/lab.sh): three systemd hosts that site.yml deploys to over SSH."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pytest

from cortex.testing.ansible_cli import Ansible, changed_tasks, recap

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["CLIENT_KEY", "GATEWAY", "changed_tasks", "lab", "playbook", "recap"]
GATEWAY = "http://10.213.0.21:31313"
CLIENT_KEY = "lab-client-key"  # inventories/lab/group_vars/gateways.yml


def lab(*args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "lab" / "lab.sh"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=check)


def playbook(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return Ansible(ROOT).playbook("inventories/lab", *args, timeout=timeout)


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
    first = playbook("site.yml")
    yield first
    if not was_up:
        lab("down", check=False)
