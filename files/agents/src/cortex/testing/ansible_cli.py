"""Ansible's command lines against this collection, as an operator's controller runs them.

For the collection's tests (tests/unit under ansible-test, tests/playbooks, tests/lab):
`Ansible` runs ansible-playbook and ansible-inventory from this interpreter's venv with the
collection on the collections path, whether the tests run from a checkout (the repository
is the collection through the link `make collection` makes) or from ansible-test's staged
copy (a real ansible_collections tree). `recap` and `changed_tasks` read a run's output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess  # nosec B404 - runs ansible's own command lines
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def collection_root(start: Path) -> Path:
    """The collection a test file belongs to: the nearest folder up with a galaxy.yml."""
    for d in [start, *start.parents]:
        if (d / "galaxy.yml").is_file():
            return d
    raise FileNotFoundError(f"no galaxy.yml above {start}")


def collections_path(root: Path) -> Path:
    """The folder Ansible finds the collection `root` under (ANSIBLE_COLLECTIONS_PATH)."""
    if root.parent.parent.name == "ansible_collections":
        return root.parents[2]  # ansible-test's staged copy: a real collection tree
    path = root / ".cache" / "collections"  # a checkout: `make collection` links it
    if not (path / "ansible_collections" / "helexa" / "cortex").exists():
        subprocess.run(["make", "-s", "collection"], cwd=root, check=True)  # nosec B603 B607
    return path


class Ansible:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.collections = collections_path(root)

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}",
                    ANSIBLE_CONFIG=str(self.root / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
                    ANSIBLE_COLLECTIONS_PATH=str(self.collections),
                    ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="default",
                    ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")

    def run(self, cmd: Sequence[str], timeout: int = 600) -> subprocess.CompletedProcess:
        """`cmd` (its first word a program of this venv) in the collection's root."""
        argv = [str(BIN / cmd[0]), *cmd[1:]]
        return subprocess.run(argv, cwd=self.root, capture_output=True, text=True,  # nosec B603
                              timeout=timeout, env=self.env, check=False)

    def playbook(self, inventory: str | Path, *args: str, ok: bool = True,
                 timeout: int = 900) -> subprocess.CompletedProcess:
        """ansible-playbook -i `inventory` `args`; with `ok`, it must succeed."""
        r = self.run(["ansible-playbook", "-i", str(inventory), *args], timeout=timeout)
        if ok:
            assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
        return r

    def inventory_list(self, config: Path, *extra: str, raw: bool = False) -> dict:
        """ansible-inventory --list from `config`, which must load without warnings; values
        Ansible marks unsafe are plain unless `raw`."""
        r = self.run(["ansible-inventory", "-i", str(config), "--list", *extra])
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        assert "[WARNING]" not in r.stderr, r.stderr[-4000:]
        data = json.loads(r.stdout)
        return data if raw else plain(data)


def plain(value: Any) -> Any:
    """ansible-inventory's JSON with values marked unsafe ({"__ansible_unsafe": v}) as v."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines → {host: {ok, changed, failed, ...}}."""
    hosts = {}
    for m in re.finditer(r"^(\S+)\s+:\s+(.*)$", output.split("PLAY RECAP")[-1], re.M):
        hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return hosts


def changed_tasks(output: str) -> list[str]:
    """'TASK name: host' for each task that reported a change (to say why a rerun changed)."""
    found, task = [], ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: ["):
            found.append(f"{task}: {line.split('[', 1)[1].split(']', 1)[0]}")
    return found
