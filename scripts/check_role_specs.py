"""Fail when a role's defaults/main.yml and meta/argument_specs.yml disagree (make lint).

Every default must be documented in the role's `main` entry point and every documented option
must have a default, so the two key sets are equal. Literal defaults (numbers, booleans, plain
strings, lists, dicts) must match too; a templated default (``{{ ... }}``) is documented in
words, so only its key is compared.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def check(role: Path) -> list[str]:
    defaults_file = role / "defaults" / "main.yml"
    specs_file = role / "meta" / "argument_specs.yml"
    if not defaults_file.exists() and not specs_file.exists():
        return []
    defaults = yaml.safe_load(defaults_file.read_text()) or {} if defaults_file.exists() else {}
    specs = yaml.safe_load(specs_file.read_text()) if specs_file.exists() else None
    options = ((specs or {}).get("argument_specs", {}).get("main", {}) or {}).get("options") or {}
    problems = []
    for name in sorted(set(defaults) - set(options)):
        problems.append(f"{role.name}: {name} is in defaults/main.yml but not documented in "
                        "meta/argument_specs.yml (main)")
    for name in sorted(set(options) - set(defaults)):
        problems.append(f"{role.name}: {name} is documented in meta/argument_specs.yml but has "
                        "no default in defaults/main.yml")
    for name in sorted(set(options) & set(defaults)):
        value, spec = defaults[name], options[name]
        if "default" not in spec:
            problems.append(f"{role.name}: {name} has no default: in meta/argument_specs.yml")
            continue
        templated = isinstance(value, str) and "{{" in value
        if not templated and spec["default"] != value:
            problems.append(f"{role.name}: {name} defaults to {value!r} in defaults/main.yml but "
                            f"{spec['default']!r} in meta/argument_specs.yml")
    return problems


def main() -> int:
    roles = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())
    problems = [msg for role in roles for msg in check(role)]
    for msg in problems:
        print(msg, file=sys.stderr)
    print(f"role specs: {len(roles)} roles, {len(problems)} disagreements")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
