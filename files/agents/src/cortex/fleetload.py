"""`cortex load MODEL [--node N]` and `cortex unload MODEL [--node N]`: through the
gateway's admin API, with a progress bar while the model downloads and loads.

The load call returns when the model is loaded (minutes for a large download); meanwhile
the command reads the fleet (`GET /admin/fleet`), where the neuron's own report of the
load shows: its phase (downloading, loading), fraction, bytes and time left.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from cortex.fleetapi import Admin, CliError

POLL_SECS = 0.5


def run(args: Any) -> int:
    admin = Admin(args.url, args.admin_key)
    body = {"model": args.model, **({"node": args.node} if args.node else {})}
    try:
        if args.command == "load":
            reply = load(admin, body, quiet=args.json, timeout=args.timeout)
        else:
            reply = admin.post("/admin/models/unload", body, timeout=120)
    except CliError as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, indent=2))
    elif args.command == "load":
        node = reply.get("node") or args.node
        again = " (it was loaded already)" if reply.get("already_loaded") else ""
        print(f"{args.model}: loaded on {node}{again}")
    else:
        nodes = ", ".join(reply["nodes"]) or "no node (it was not loaded)"
        print(f"{args.model}: unloaded from {nodes}")
        if reply.get("replicas_min"):
            print(f"note: {args.model} has replicas.min = {reply['replicas_min']}: the "
                  "gateway loads it again to keep that many", file=sys.stderr)
    return 0


def load(admin: Admin, body: dict[str, Any], *, quiet: bool, timeout: float) -> dict:
    """POST the load in a thread; show the neuron's progress until it answers."""
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["reply"] = admin.post("/admin/models/load", body, timeout=timeout)
        except CliError as exc:
            box["error"] = exc

    worker = threading.Thread(target=call, name="load", daemon=True)
    worker.start()
    console = Console(stderr=True, quiet=quiet)
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[size]}"), TextColumn("{task.fields[eta]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(f"{body['model']}: waiting", total=None, size="", eta="")
        while worker.is_alive():
            worker.join(POLL_SECS)
            shown = progress_of(admin, body["model"], body.get("node"))
            if shown is not None:
                bar.update(task, **shown)
        if "reply" in box:
            bar.update(task, description=f"{body['model']}: loaded", total=1, completed=1,
                       eta="")
    if "error" in box:
        raise box["error"]
    return box["reply"]


def progress_of(admin: Admin, model: str, node: str | None) -> dict[str, Any] | None:
    """What the bar shows now, from the fleet view; None when the gateway cannot say."""
    try:
        view = admin.get("/admin/fleet", timeout=5)
    except CliError:
        return None
    entry = next((m for m in view["models"] if m["id"] == model), None)
    load_id = entry["load_id"] if entry else model
    for n in view["nodes"]:
        if node and n["name"] != node:
            continue
        for m in n["models"]:
            if m["id"] != load_id or m["status"] != "loading":
                continue
            p = m.get("progress") or {}
            phase = p.get("phase") or "preparing"
            done, total = p.get("bytes_done"), p.get("bytes_total")
            fields: dict[str, Any] = {"description": f"{model} on {n['name']}: {phase}",
                                      "eta": _eta(p.get("eta_secs")), "size": ""}
            if phase == "downloading" and total:
                fields["size"] = f"{(done or 0) / 1e6:.1f}/{total / 1e6:.1f} MB"
            if p.get("fraction") is not None:
                fields.update(total=1.0, completed=float(p["fraction"]))
            return fields
    return None


def _eta(secs: Any) -> str:
    if not isinstance(secs, int | float) or secs <= 0:
        return ""
    return f"about {time.strftime('%M:%S', time.gmtime(secs))} left"
