"""What the dashboard shows, read off the poller's cache of the neurons' own reports.

Nothing here asks a neuron anything: every gateway worker and host polls every neuron,
so any of them draws the same fleet. The request rates come from the neurons' counters
too (the change between two polls), so they are the fleet's, not one worker's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cortex.gateway.composition import Gateway
    from cortex.gateway.fleet import ModelOnNode, Node


class Rates:
    """Requests/s and tokens/s per (node, model), from the neurons' running totals."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[float, int, int]] = {}
        self.now: dict[tuple[str, str], tuple[float, float]] = {}

    def sample(self, nodes: list[Node], name: Callable[[str], str] = str
               ) -> dict[str, dict[str, float]]:
        """The fleet's rates now, by model (`name` maps a load id to what to show)."""
        seen = set()
        for node in nodes:
            for m in node.models.values():
                if m.status != "loaded" or "requests_total" not in m.info:
                    continue
                key = (node.name, m.id)
                seen.add(key)
                reqs, toks = int(m.info["requests_total"]), int(m.info["completion_tokens_total"])
                prev = self._last.get(key)
                if prev is None or node.last_ok <= prev[0]:
                    if prev is None:
                        self._last[key] = (node.last_ok, reqs, toks)
                    continue  # no new poll of this node since the last sample
                dt = node.last_ok - prev[0]
                self.now[key] = (max(0, reqs - prev[1]) / dt, max(0, toks - prev[2]) / dt)
                self._last[key] = (node.last_ok, reqs, toks)
        for key in set(self._last) - seen:
            self._last.pop(key, None)
            self.now.pop(key, None)
        out: dict[str, dict[str, float]] = {}
        for (_node, model), (rps, tps) in self.now.items():
            agg = out.setdefault(name(model), {"rps": 0.0, "tps": 0.0})
            agg["rps"] = round(agg["rps"] + rps, 2)
            agg["tps"] = round(agg["tps"] + tps, 1)
        return out


def public_id(gw: Gateway, load_id: str) -> str:
    entry = gw.catalogue.by_load_id(load_id)
    return entry.id if entry else load_id


def state(gw: Gateway, now: float | None = None, *, admin: bool = True) -> dict[str, Any]:
    """The dashboard's picture of the fleet. Not for an admin: no error text from a poll
    or a neuron (addresses, file paths, hub errors), only that there was one."""
    now = time.time() if now is None else now
    nodes = list(gw.fleet.nodes.values())
    return {"t": round(now, 3), "health": gw.health(detail=admin),
            "nodes": [_node(gw, n, now, admin) for n in nodes],
            "cache": {"prompt_tokens": sum(n.prompt_tokens for n in nodes),
                      "cached_tokens": sum(n.cached_tokens for n in nodes),
                      "hit_ratio": _ratio(sum(n.cached_tokens for n in nodes),
                                          sum(n.prompt_tokens for n in nodes))},
            "models": _models(gw, now),
            # How this worker placed requests (cortex_routing_total's reasons, its own part)
            "routing": gw.metrics.worker_view()["routing"],
            "scale_events": [e.describe() for e in list(gw.scaler.events)[-20:]]}


POLL_FAILED = "the gateway could not read this node's state (details for admins)"


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def _cache(n: Node) -> dict[str, Any]:
    """A neuron's session cache as the dashboard shows it (empty: an older neuron)."""
    c = n.cache
    tiers = {t: {k: (c.get(t) or {}).get(k) for k in ("used_mb", "budget_mb", "blocks")}
             for t in ("ram", "disk") if c.get(t)}
    return {"enabled": c.get("enabled"), **tiers, "hits": c.get("hits"),
            "misses": c.get("misses"), "hit_ratio": _ratio(n.cached_tokens, n.prompt_tokens)
            } if c else {}


def _ttl_left(gw: Gateway, m: ModelOnNode, now: float) -> float | None:
    entry = gw.catalogue.by_load_id(m.id)
    ttl = gw.catalogue.keep_alive(entry) if entry else 0
    if m.status != "loaded" or not ttl or not m.last_used:
        return None
    if m.busy:
        return float(ttl)  # the clock starts when the last request ends
    return round(max(0.0, ttl - (now - m.last_used)), 1)


def _node(gw: Gateway, n: Node, now: float, admin: bool = True) -> dict[str, Any]:
    models = []
    for m in n.models.values():
        if m.status == "available":
            continue
        models.append({
            "id": m.id, "public_id": public_id(gw, m.id), "status": m.status,
            "slots": m.info.get("slots"), "in_flight": m.in_flight,
            "queue_depth": m.queue_depth, "tok_s_decode": m.tok_s_decode,
            "tok_s_prefill": m.tok_s_prefill, "vram_mb": m.vram_mb,
            "last_used": m.last_used, "ttl_left_secs": _ttl_left(gw, m, now),
            "progress": m.info.get("progress"),
        })
    return {
        "name": n.name, "healthy": n.healthy, "drained": n.drained, "failures": n.failures,
        "last_error": n.last_error if admin or not n.last_error else POLL_FAILED,
        "polled_secs_ago": round(now - n.last_ok, 1)
        if n.last_ok else None,
        "activation": n.activation.get("state"),
        "devices": [{k: d.get(k) for k in ("index", "name", "kind", "vram_total_mb",
                                             "vram_used_mb", "vram_free_mb", "utilization_pct",
                                             "temp_c")} for d in n.devices],
        "models": models,
        "cache": _cache(n),
        # What an admin may load here: files the neuron has, and catalogue models feasible.
        "loadable": sorted({*(m.id for m in n.models.values() if m.status == "available"),
                            *(e.id for e in gw.catalogue.entries.values()
                              if n in gw.router.feasible(e))}),
    }


def _models(gw: Gateway, now: float) -> list[dict[str, Any]]:
    cat = gw.catalogue
    aliases: dict[str, list[str]] = {}
    for alias, target in cat.aliases.items():
        aliases.setdefault(target, []).append(alias)
    out = []
    listed = set()
    for e in cat.entries.values():
        listed.add(e.load_id)
        out.append({"id": e.id, "load_id": e.load_id, "catalogued": True,
                    "aliases": sorted(aliases.get(e.id, [])), "pinned_on": e.pinned_on,
                    "keep_alive_secs": cat.keep_alive(e) or None, "vram_mb": e.vram_mb,
                    "priority": e.residency_priority,
                    "feasible_on": [n.name for n in gw.router.feasible(e)],
                    "replicas": _replicas(gw, e, now),
                    "locations": _locations(gw, e.load_id, now)})
    for n in gw.fleet.nodes.values():
        for m in n.models.values():
            if m.id in listed or m.status == "available":
                continue
            listed.add(m.id)
            out.append({"id": m.id, "load_id": m.id, "catalogued": False, "aliases": [],
                        "pinned_on": [], "keep_alive_secs": None, "vram_mb": m.vram_mb,
                        "priority": None, "feasible_on": [],
                        "locations": _locations(gw, m.id, now)})
    return out


def _locations(gw: Gateway, load_id: str, now: float) -> list[dict[str, Any]]:
    locs = []
    for n in gw.fleet.nodes.values():
        m = n.models.get(load_id)
        if m is None or m.status == "available":
            continue
        locs.append({"node": n.name, "status": m.status if n.healthy else "recovering",
                     "ttl_left_secs": _ttl_left(gw, m, now), "progress": m.info.get("progress")})
    return locs


def _replicas(gw: Gateway, e: Any, now: float) -> dict[str, Any]:
    """Replicas serving against the model's floor and ceiling, and how long every one of
    them has been saturated (None: not saturated)."""
    since = gw.scaler.saturated_since(e.id)
    return {"serving": len(gw.fleet.replicas(e.load_id)), "min": e.replicas.min,
            "max": gw.scaler.max_replicas(e),
            "saturated_secs": round(now - since, 1) if since is not None else None}
