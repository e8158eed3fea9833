"""The wheel hosts install (the roles' wheelhouse) carries the services, not the test kit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

AGENTS = Path(__file__).resolve().parents[1]


def test_the_hosts_wheel_has_no_test_kit_and_no_pytest_plugin(tmp_path):
    # Built as roles/_common/tasks/wheelhouse.yml builds it (`pip wheel` of this project),
    # from a copy, so that the build writes nothing into the source tree.
    src = tmp_path / "agents"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(AGENTS / name, src / name)
    shutil.copytree(AGENTS / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path / "wheels"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheels").glob("helexa_cortex-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entries = z.read(entry_points).decode()
    assert not [n for n in names if n.startswith("cortex/testing/")]
    assert "pytest11" not in entries  # no pytest run on a host loads a test fixture
    # ...while the services and their data files are all there.
    for name in ("cortex/neuron/app.py", "cortex/gateway/app.py", "cortex/neuron/openapi.json",
                 "cortex/gateway/openapi.json", "cortex/gateway/ui/static/app.js"):
        assert name in names, name
    assert "cortex = cortex.cli:cortex_main" in entries
