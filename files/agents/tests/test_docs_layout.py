"""LAYERS.md and docs/architecture.md against the tree: the module map cannot drift.

Every module the import contracts layer (.importlinter) is named in LAYERS.md; every module
LAYERS.md names, and every source file docs/architecture.md names, exists. A module moved
or renamed fails here until both documents follow it.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

import cortex

REPO = Path(__file__).resolve().parents[3]
AGENTS = REPO / "files" / "agents"
SOURCE = Path(cortex.__file__).parent
LAYERS_MD = AGENTS / "LAYERS.md"
ARCHITECTURE_MD = REPO / "docs" / "architecture.md"
TICKED = re.compile(r"`([^`\s]+)`")


def _contract_modules() -> set[str]:
    """Every module a `layers` contract names, e.g. cortex.gateway.relay."""
    ini = configparser.ConfigParser()
    ini.read(AGENTS / ".importlinter")
    out = set()
    for section in ini.sections():
        if ini[section].get("type") == "layers":
            for line in ini[section]["layers"].split("\n"):
                out |= {m.strip() for m in line.split("|") if m.strip()}
    return out


def _exists(package: Path, name: str) -> bool:
    """`name` (`relay`, `anthropic.routes`, `dispatch`) is a module or package somewhere
    under `package`."""
    rel = name.replace(".", "/")
    return any(p.is_dir() or p.suffix == ".py"
               for p in [*package.rglob(rel + ".py"), *package.rglob(rel)])


def _layer_tables() -> dict[str, list[str]]:
    """The module names in LAYERS.md's tables' second column, by package."""
    tables: dict[str, list[str]] = {"gateway": [], "neuron": []}
    package = None
    for line in LAYERS_MD.read_text().splitlines():
        if line.startswith(("Gateway,", "Neuron,")):
            package = line.split(",")[0].lower()
        elif package and line.startswith("|") and not line.startswith("|---"):
            cells = line.split("|")
            if cells[1].strip() != "layer":
                tables[package] += TICKED.findall(cells[2])
    return tables


def test_layers_md_names_every_module_the_contracts_layer():
    text = LAYERS_MD.read_text()
    named = set(TICKED.findall(text))
    missing = []
    for module in sorted(_contract_modules()):
        parts = module.split(".")
        rel = ".".join(parts[2:])  # within cortex.gateway / cortex.neuron
        if module not in named and rel not in named and parts[-1] not in named:
            missing.append(module)
    assert not missing, f"LAYERS.md does not name {missing}"


@pytest.mark.parametrize("package", ["gateway", "neuron"])
def test_every_module_in_layers_md_exists(package):
    names = _layer_tables()[package]
    assert len(names) > 10  # (the table was read)
    gone = [n for n in names if n != "cortex.core" and not _exists(SOURCE / package, n)]
    assert not gone, f"LAYERS.md's {package} table names modules that do not exist: {gone}"


def test_every_source_file_architecture_md_names_exists():
    roots = [SOURCE, AGENTS / "tests", REPO / "bench", REPO / "scripts"]
    files = [p.relative_to(REPO).as_posix() for root in roots for p in root.rglob("*")]
    named = {t for t in TICKED.findall(ARCHITECTURE_MD.read_text())
             if t.endswith((".py", "/")) and not t.startswith(("/", "."))}
    assert len(named) > 20  # (the document was read)
    gone = sorted(t for t in named if not (REPO / t).exists()
                  and not any(f.endswith("/" + t.rstrip("/")) or f == t.rstrip("/")
                             for f in files))
    assert not gone, f"docs/architecture.md names files that do not exist: {gone}"
