"""pip-audit of the pinned dependencies (files/agents/constraints.txt): fail on a known
vulnerability, and say plainly what could not be audited.

pip-audit exits 0 when its vulnerability service cannot be reached (every package is
"skipped"), which would make a check that cannot fail; this wrapper counts what was really
audited and prints a warning when that is nothing. A vulnerability accepted on purpose goes
in requirements/audit-ignore.txt as `ID  reason` (a reason is required).

Usage: audit_deps.py PIP_AUDIT CONSTRAINTS [IGNORE_FILE]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def ignored(path: Path) -> dict[str, str]:
    out = {}
    if path.is_file():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            vuln, reason = [*line.split(None, 1), ""][:2]
            if not reason.strip():
                sys.exit(f"{path}:{n}: {vuln} needs a reason beside it")
            out[vuln] = reason.strip()
    return out


def main() -> int:
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.rsplit("Usage: ", 1)[1])
    pip_audit, constraints = sys.argv[1], Path(sys.argv[2])
    accepted = ignored(Path(sys.argv[3])) if len(sys.argv) == 4 else {}
    pins = [line for line in constraints.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write("\n".join(pins) + "\n")
        req.flush()
        cmd = [pip_audit, "-r", req.name, "--no-deps", "--disable-pip", "-f", "json",
               "--progress-spinner", "off"]
        for vuln in accepted:
            cmd += ["--ignore-vuln", vuln]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    try:
        report = json.loads(run.stdout)
    except ValueError:
        print(run.stderr[-2000:], file=sys.stderr)
        print(f"pip-audit failed (exit {run.returncode}) without a report", file=sys.stderr)
        return 1
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if "skip_reason" in d]
    found = [(d["name"], d["version"], v) for d in deps for v in d.get("vulns", [])]
    audited = len(deps) - len(skipped)
    for name, version, v in found:
        fix = ", ".join(v.get("fix_versions") or []) or "no fixed release"
        print(f"VULNERABLE {name} {version}: {v['id']} (fixed in {fix})")
    for vuln, reason in accepted.items():
        print(f"accepted {vuln}: {reason}")
    print(f"pip-audit: {len(pins)} pins, {audited} audited, {len(found)} known "
          f"vulnerabilities, {len(skipped)} not auditable")
    if skipped and not audited:
        print("WARNING: pip-audit reached no vulnerability service (pypi.org's per-release "
              "JSON API and OSV are out of reach here): NOTHING WAS AUDITED. Run `make audit` "
              "where they are.", file=sys.stderr)
    elif skipped:
        names = ", ".join(sorted(d["name"] for d in skipped))
        print(f"not auditable: {names}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
