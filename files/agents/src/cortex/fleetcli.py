"""`cortex status | models | drain | undrain`: the fleet from a terminal (or --json)."""

from __future__ import annotations

import json
import sys
from typing import Any

from cortex.fleetapi import Admin, CliError


def run(args: Any) -> int:
    admin = Admin(args.url, args.admin_key)
    try:
        if args.command == "status":
            data = admin.get("/admin/nodes")
            print(json.dumps(data, indent=2) if args.json else status_table(data))
        elif args.command == "models":
            data = admin.get("/v1/models")
            print(json.dumps(data, indent=2) if args.json else models_table(data["data"]))
        else:
            body = admin.post(f"/admin/nodes/{args.node}/{args.command}")
            print(json.dumps(body, indent=2) if args.json else
                  f"{args.node}: {'drained' if body['drained'] else 'active'} "
                  f"({body.get('in_flight', 0)} requests in flight)")
    except CliError as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        return 1
    return 0


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[[("" if c is None else str(c)) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def status_table(data: dict) -> str:
    h = data["health"]
    rows = []
    for n in data["nodes"]:
        devs = ", ".join(f"{d.get('name', '?')} {d.get('vram_free_mb', 0)}/"
                         f"{d.get('vram_total_mb', 0)} MB free" for d in n["devices"]) or "-"
        models = ", ".join(f"{m['id']} ({m['status']}"
                           + (f", {m['in_flight']}+{m['queue_depth']} busy"
                              if m["in_flight"] + m["queue_depth"] else "") + ")"
                           for m in n["models"] if m["status"] != "available") or "-"
        rows.append([n["name"], "healthy" if n["healthy"] else "UNHEALTHY",
                     "drained" if n["drained"] else "", devs, models])
    head = (f"fleet {h['status']}: {h['nodes']['healthy']}/{h['nodes']['total']} nodes healthy"
            f", {h['nodes'].get('drained', 0)} drained")
    out = [head, "", table(["NODE", "HEALTH", "DRAINED", "DEVICES", "MODELS"], rows)]
    for u in h["unservable"]:
        out.append(f"unservable: {u['model']} on {u['node'] or 'any node'}: {u['reason']}"
                   f" ({u['detail']})")
    return "\n".join(out)


def models_table(models: list[dict]) -> str:
    rows = [[m["id"], "yes" if m["loaded"] else "no",
             ", ".join(f"{loc['node']}:{loc['status']}" for loc in m["locations"]) or "-",
             ", ".join(m["feasible_on"]) or "-", m.get("alias_of", "")] for m in models]
    return table(["MODEL", "LOADED", "LOCATIONS", "FEASIBLE ON", "ALIAS OF"], rows)
