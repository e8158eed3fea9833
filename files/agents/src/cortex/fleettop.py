"""`cortex top`: a live terminal view of the fleet (rich), read from `GET /admin/fleet`.

Nodes with their devices and each model's slots, queue and wait; each model's replicas
against its floor and ceiling, loads under way and how long it has been saturated; the
cache hit ratio and the rules that routed requests; the latest scale events. Counts of
routing and scale events are those of the gateway worker that answered (it says which).
`--once` prints one frame and exits (for scripts, or a terminal without a screen).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cortex.fleetapi import Admin, CliError


def run(args: Any) -> int:
    admin = Admin(args.url, args.admin_key)
    console = Console()
    try:
        if args.once:
            console.print(frame(admin.get("/admin/fleet"), args.url))
            return 0
        with Live(frame(admin.get("/admin/fleet"), args.url), console=console,
                  refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(args.interval)
                try:
                    live.update(frame(admin.get("/admin/fleet"), args.url))
                except CliError as exc:  # the gateway restarting: say so, keep trying
                    live.update(Text(f"cortex top: {exc}", style="red"))
    except CliError as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def frame(view: dict[str, Any], url: str) -> Group:
    """One screen of `cortex top` from a fleet view."""
    parts: list[Any] = [_header(view, url), _nodes(view), _models(view)]
    events = view.get("scale_events") or []
    if events:
        parts.append(_events(events))
    return Group(*parts)


def _header(view: dict[str, Any], url: str) -> Text:
    nodes = view["nodes"]
    healthy = sum(n["healthy"] for n in nodes)
    text = Text(f"cortex top  {url}  worker {view['worker']}  ", style="bold")
    text.append(f"{healthy}/{len(nodes)} nodes healthy",
                style="green" if healthy == len(nodes) else "red")
    cache = view.get("cache")
    if cache and cache.get("prompt_tokens"):
        text.append(f"  cache hit {cache['hit_ratio']:.0%} of "
                    f"{cache['prompt_tokens']} prompt tokens")
    routing = view.get("routing")
    if routing:
        text.append("  routed: " + ", ".join(f"{k} {v}" for k, v in sorted(routing.items())))
    return text


def _nodes(view: dict[str, Any]) -> Table:
    t = Table(title="nodes", title_justify="left", expand=True)
    for col in ("NODE", "STATE", "MEMORY FREE", "MODEL", "RUNNING", "QUEUED", "WAIT"):
        t.add_column(col)
    for n in view["nodes"]:
        state = ("drained" if n["drained"] else "ok") if n["healthy"] else "UNHEALTHY"
        free = ", ".join(f"{d.get('vram_free_mb', 0)}/{d.get('vram_total_mb', 0)} MB"
                         for d in n["devices"]) or "-"
        models = [m for m in n["models"] if m["status"] in ("loaded", "loading")]
        if not models:
            t.add_row(n["name"], state, free, "-", "", "", "")
        for i, m in enumerate(models):
            head = (n["name"], state, free) if i == 0 else ("", "", "")
            if m["status"] == "loading":
                p = m.get("progress") or {}
                frac = p.get("fraction")
                pct = f" {frac:.0%}" if isinstance(frac, int | float) else ""
                t.add_row(*head, m["id"], f"loading: {p.get('phase', '')}{pct}", "", "")
                continue
            slots = m.get("slots") or 0
            running = f"{m['in_flight']}/{slots}" if slots else str(m["in_flight"])
            wait = m.get("queue_wait_secs") or 0
            style = "red" if slots and m["in_flight"] >= slots and m["queue_depth"] else ""
            t.add_row(*head, m["id"], Text(running, style=style), str(m["queue_depth"]),
                      f"{wait:.1f}s" if wait else "")
    return t


def _models(view: dict[str, Any]) -> Table:
    t = Table(title="models", title_justify="left", expand=True)
    for col in ("MODEL", "REPLICAS", "MIN..MAX", "ON", "LOADING", "SATURATED"):
        t.add_column(col)
    for m in view["models"]:
        sat = m.get("saturated_secs")
        t.add_row(m["id"], str(len(m["replicas"])), f"{m['min']}..{m['max']}",
                  ", ".join(m["replicas"]) or "-", ", ".join(m["loading"]),
                  Text(f"{sat:.0f}s", style="red") if sat is not None else "")
    return t


def _events(events: list[dict[str, Any]]) -> Table:
    t = Table(title="scale events (this worker)", title_justify="left", expand=True)
    for col in ("AT", "MODEL", "ACTION", "REASON", "NODE", "RESULT"):
        t.add_column(col)
    for e in events[-8:]:
        style = {"ok": "green", "failed": "red"}.get(e["result"], "")
        t.add_row(time.strftime("%H:%M:%S", time.localtime(e["at"])), e["model"],
                  e["action"], e["reason"], e["node"] or "-",
                  Text(e["result"] + (f": {e['detail']}" if e.get("detail") else ""),
                       style=style))
    return t
