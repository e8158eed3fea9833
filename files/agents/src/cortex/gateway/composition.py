"""The composition root: everything one gateway worker holds, built from its config.

Both planes (the Flask control plane, the WSGI data plane) get one `Gateway`; nothing
here knows about HTTP frameworks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cortex.core.errors import NotFound
from cortex.gateway import affinity
from cortex.gateway.auth import Auth
from cortex.gateway.budget import Limits
from cortex.gateway.catalogue import Catalogue
from cortex.gateway.config import GatewayConfig, ModelsConfig
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.metrics import FLUSH_SECS, GatewayMetrics
from cortex.gateway.placement import InFlight, Placement
from cortex.gateway.recent import RecentRequests
from cortex.gateway.relay.accounting import Ledger
from cortex.gateway.relay.dispatch import Dispatcher
from cortex.gateway.router import Router
from cortex.gateway.scaler import Scaler
from cortex.gateway.upstream import Upstream

log = logging.getLogger(__name__)


class Gateway:
    """Everything one gateway worker holds (the Flask app has it as `extensions["gateway"]`)."""

    def __init__(self, cfg: GatewayConfig, models: ModelsConfig,
                 metrics: GatewayMetrics | None = None,
                 placement: Callable[[InFlight], Placement] | None = None) -> None:
        g = cfg.gateway
        self.cfg = cfg
        self.upstream = Upstream(g.neuron_token, g.connect_timeout_secs, g.read_timeout_secs,
                                 pool=g.upstream_pool_size, max_reply=g.max_reply_bytes)
        self.fleet = Fleet(cfg.neurons, self.upstream, g.poll_interval_secs)
        self.catalogue = Catalogue(models, g.default_keep_alive)
        self.metrics = metrics or GatewayMetrics()
        self.in_flight = InFlight()  # what this worker has sent and not seen finish
        self.router = Router(self.fleet, self.catalogue, self.metrics,
                             strategy=cfg.eviction.strategy, load_timeout=g.load_timeout_secs,
                             defrag_after=cfg.eviction.defrag_after_cycles,
                             in_flight=self.in_flight)
        self.scaler = Scaler(self.fleet, self.catalogue, self.router, self.metrics,
                             interval=g.poll_interval_secs)
        self.auth = Auth(cfg.entitlements, g.admin_keys, Path(g.state_dir))
        self.limits = Limits(self.catalogue, self.fleet)  # a capped request's output bound
        self.recent = RecentRequests()  # this worker's finished requests, for /ui
        # Which replica first: the placement policy ([routing] policy) over that load.
        r = cfg.routing
        placement = placement or affinity.policy(
            r.policy, affinity.Balance(r.balance_abs_slots, r.balance_rel))
        self.placement = placement(self.in_flight)
        self.dispatcher = Dispatcher(self.fleet, self.router, self.placement, self.in_flight,
                                     self.upstream, self.metrics,
                                     read_timeout=g.read_timeout_secs)
        self.ledger = Ledger(self.metrics, self.recent)
        self._stop = threading.Event()

    def start(self) -> None:
        self.fleet.start()
        threading.Thread(target=self._housekeeping, name="reaper-scaler", daemon=True).start()
        self.metrics.buffer.flush_every(FLUSH_SECS, self._stop)

    def stop(self) -> None:
        self._stop.set()
        self.fleet.stop()
        self.metrics.flush()

    def _housekeeping(self) -> None:
        """The idle reaper and the scaler, once a poll interval, on the poller's view."""
        while not self._stop.wait(self.cfg.gateway.poll_interval_secs):
            for name, step in (("idle reaper", self.router.reap_idle),
                               ("scaler", self.scaler.tick)):
                try:
                    step()
                except Exception:  # they must outlive any one bad poll
                    log.exception("%s failed", name)

    def node(self, name: str) -> Node:
        node = self.fleet.nodes.get(name)
        if node is None:
            raise NotFound(f"no node named {name!r}; nodes: {', '.join(self.fleet.nodes)}",
                           code="node_not_found")
        return node

    def health(self, detail: bool = True) -> dict[str, Any]:
        """The fleet's health. `detail` (admins, logs): why each model is unservable, in
        the neurons' own words (file paths, hub errors); the public view says which model
        and the kind of reason only."""
        nodes = list(self.fleet.nodes.values())
        healthy = [n for n in nodes if n.healthy]
        unservable = []
        for entry in self.catalogue.entries.values():
            feasible = self.router.feasible(entry)
            if not any(n.routable for n in feasible):
                reason = "no_feasible_node" if not feasible else "feasible_nodes_down"
                unservable.append({"node": None, "model": entry.id, "reason": reason,
                                   "detail": f"feasible on: {[n.name for n in feasible]}"})
        for n in healthy:
            for failed in n.activation.get("failed", []):
                unservable.append({"node": n.name, "model": failed.get("model_id"),
                                   "reason": "prewarm_failed", "detail": failed.get("error")})
        if not detail:
            unservable = [{k: v for k, v in u.items() if k != "detail"} for u in unservable]
        if not healthy:
            status = "impaired"
        elif len(healthy) < len(nodes) or unservable:
            status = "degraded"
        else:
            status = "ok"
        return {"status": status, "nodes": {"healthy": len(healthy), "total": len(nodes),
                                            "drained": sum(n.drained for n in nodes)},
                "unservable": unservable}
