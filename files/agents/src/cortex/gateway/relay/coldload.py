"""Waiting on a cold load with something to show for it.

`Router.load` blocks for as long as a load takes: minutes for a big model, and a client
that hears nothing for that long gives up. `waiting` runs it in its own thread (a greenlet
under gevent) and yields, every `tick` seconds while it runs, what the neurons report of
the load (the poller's cache: download bytes, then llama.cpp's progress), and returns
what the load returned. Errors that come before the first tick (an unknown model, no
healthy node) are raised before any `Waiting`, so the caller can still answer them with a
plain 4xx/5xx; only once a `Waiting` comes does it need to commit to a 200 stream.

A caller that stops listening (its client went away) stops only its own wait: the load
goes on for the other requests waiting on it, as the router single-flights it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Generator
from dataclasses import dataclass
from typing import Any

from cortex.gateway.catalogue import ModelRef
from cortex.gateway.fleet import Fleet, Node
from cortex.gateway.router import Router


@dataclass
class Waiting:
    model: str  # what the client asked for, resolved through aliases
    node: str | None  # where it is loading, once a poll has seen it
    phase: str  # waiting (not seen on a neuron yet) | preparing | downloading | loading
    fraction: float | None
    eta_secs: float | None
    elapsed_secs: float

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "node": self.node, "phase": self.phase,
                "fraction": self.fraction, "eta_secs": self.eta_secs,
                "elapsed_secs": round(self.elapsed_secs, 1)}


def waiting(router: Router, fleet: Fleet, model: ModelRef, exclude: Collection[str],
            tick: float) -> Generator[Waiting, None, Node | None]:
    """`router.load(model, exclude)` in a thread: a `Waiting` every `tick` s while it runs,
    then what it returned (or raised)."""
    if model.entry is None:
        return router.load(model, exclude)  # a 404: at once, no thread
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:  # this thread outlives a caller that leaves: the caller is counted
        try:
            box["node"] = router.load(model, exclude, counted=False)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    with router.waiting_for(model.load_id):  # until served, or until the caller leaves
        threading.Thread(target=run, name=f"load:{model.public_id}", daemon=True).start()
        since = time.monotonic()
        while not done.wait(tick):
            yield progress_of(fleet, model, since)
        if "error" in box:
            raise box["error"]
    return box["node"]


def progress_of(fleet: Fleet, model: ModelRef, since: float) -> Waiting:
    """What the neurons last reported of `model`'s load (waited on `since` then)."""
    elapsed = time.monotonic() - since
    for node in fleet.nodes.values():
        m = node.models.get(model.load_id)
        if m is not None and m.status == "loading":
            p = m.info.get("progress") or {}
            return Waiting(model.public_id, node.name, p.get("phase", "preparing"),
                           p.get("fraction"), p.get("eta_secs"), elapsed)
    return Waiting(model.public_id, None, "waiting", None, None, elapsed)
