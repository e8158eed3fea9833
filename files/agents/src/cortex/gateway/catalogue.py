"""The catalogue: models.toml entries, aliases, and the merged `/v1/models` list."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cortex.gateway.config import ModelEntry, ModelsConfig, parse_duration

if TYPE_CHECKING:
    from cortex.gateway.fleet import Fleet, Node


@dataclass(frozen=True, slots=True)
class ModelRef:
    """The model a request names, resolved through the catalogue once (in the prologue)."""

    name: str  # as the client wrote it
    entry: ModelEntry | None  # its catalogue entry (through aliases), if it has one
    load_id: str = field(init=False)  # the id neurons know it by
    public_id: str = field(init=False)  # the id clients know it by (an alias resolved)

    def __post_init__(self) -> None:  # worked out once: read several times a request
        entry = self.entry
        object.__setattr__(self, "load_id", entry.load_id if entry else self.name)
        object.__setattr__(self, "public_id", entry.id if entry else self.name)


class Catalogue:
    def __init__(self, models: ModelsConfig, default_keep_alive: str | int = 0) -> None:
        self.entries = {m.id: m for m in models.models}
        self.aliases = dict(models.aliases)
        self._by_load_id = {m.load_id: m for m in models.models}
        self._default_ttl = parse_duration(default_keep_alive)
        self.created = int(time.time())

    def resolve(self, name: str) -> ModelEntry | None:
        name = self.aliases.get(name, name)
        return self.entries.get(name) or self._by_load_id.get(name)

    def lookup(self, name: str) -> ModelRef:
        return ModelRef(name, self.resolve(name))

    def by_load_id(self, load_id: str) -> ModelEntry | None:
        return self._by_load_id.get(load_id)

    def public_ids(self) -> list[str]:
        return [*self.entries, *self.aliases]

    def keep_alive(self, entry: ModelEntry) -> float:
        if entry.keep_alive is None:
            return self._default_ttl
        return parse_duration(entry.keep_alive)

    def listing(self, fleet: Fleet, feasible: Callable[[ModelEntry], list[Node]]
                ) -> list[dict[str, Any]]:
        """Catalogue models feasible on the fleet (`feasible`: the router's placement rule),
        models loaded or loading anywhere (even if not catalogued), and aliases."""
        out: dict[str, dict[str, Any]] = {}
        for entry in self.entries.values():
            nodes = feasible(entry)
            if not nodes:
                continue
            out[entry.id] = self._entry(entry.id, entry, nodes, fleet)
        for node in fleet.nodes.values():
            for m in node.models.values():
                if m.status not in ("loaded", "loading"):
                    continue
                entry = self.by_load_id(m.id)
                key = entry.id if entry else m.id
                if key not in out:
                    out[key] = self._entry(key, entry, feasible(entry) if entry else [],
                                           fleet, fallback_id=m.id)
        for alias, target in self.aliases.items():
            if target in out:
                out[alias] = dict(out[target], id=alias, alias_of=target)
        return list(out.values())

    def _entry(self, public: str, entry: ModelEntry | None, feasible: list,
               fleet: Fleet, fallback_id: str = "") -> dict[str, Any]:
        load_id = entry.load_id if entry else fallback_id
        locations = []
        for node in fleet.nodes.values():
            m = node.models.get(load_id)
            if m is not None and m.status in ("loaded", "loading"):
                status = m.status if node.healthy else "recovering"
                locations.append({"node": node.name, "status": status,
                                  "vram_estimate_mb": m.vram_mb})
                if m.status == "loading" and m.info.get("progress"):
                    p = m.info["progress"]  # the neuron's own report (download, then load)
                    locations[-1]["progress"] = {k: p.get(k) for k in (
                        "phase", "fraction", "bytes_done", "bytes_total", "eta_secs")}
            elif node in feasible:
                locations.append({"node": node.name, "status": "unloaded",
                                  "vram_estimate_mb": entry.vram_mb if entry else None})
        info = next((node.models[load_id].info for node in fleet.nodes.values()
                     if load_id in node.models), {})
        caps = (entry.capabilities if entry and entry.capabilities
                else info.get("capabilities", []))
        body: dict[str, Any] = {
            "id": public, "object": "model", "created": self.created, "owned_by": "helexa",
            "loaded": any(loc["status"] == "loaded" for loc in locations),
            "feasible_on": [n.name for n in feasible], "locations": locations,
            "capabilities": caps,
            "tool_call": "tool_call" in caps or bool(info.get("tool_call")),
            "reasoning": "reasoning" in caps or bool(info.get("reasoning")),
        }
        if entry and entry.limit:
            body["limit"] = {k: v for k, v in vars(entry.limit).items() if v is not None}
        elif info.get("limit"):
            body["limit"] = info["limit"]
        if entry and entry.cost:
            body["cost"] = {k: v for k, v in vars(entry.cost).items() if v is not None}
        return body
