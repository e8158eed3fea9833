"""Waiting on a cold load with something to show for it.

`Router.route()` blocks for as long as a load takes: minutes for a big model, and a
client that hears nothing for that long gives up. `route_waiting` runs the same routing in
its own thread (a greenlet under gevent) and yields, every `tick` seconds while it runs,
what the neurons report of the load (the poller's cache: download bytes, then llama.cpp's
progress), and at the end the Target. Routing errors that come before the first tick
(unknown model, no healthy node) arrive first, so the caller can still answer them with a
plain 4xx/5xx; only once a `Waiting` comes does it need to commit to a 200 stream.

A caller that stops listening (its client went away) stops only its own wait: the load
goes on for the other requests waiting on it, as the router single-flights it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cortex.gateway.router import Target

if TYPE_CHECKING:
    from cortex.gateway.composition import Gateway


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

    def comment(self) -> bytes:
        """An SSE comment line (OpenAI streams): clients skip it, proxies see traffic."""
        text = f"loading {self.model}: {self.phase}"
        if self.fraction is not None:
            text += f" {self.fraction * 100:.0f}%"
        if self.eta_secs is not None:
            text += f", about {self.eta_secs:.0f} s left"
        return f": {text}\n\n".encode()


def route_waiting(gw: Gateway, name: str, exclude: frozenset[str] | set[str] = frozenset(),
                  tick: float = 1.0) -> Iterator[Waiting | Target]:
    """Yield `Waiting` every `tick` s while `name` is being routed (a cold load), then its
    Target; routing errors are raised from the iterator."""
    entry = gw.catalogue.resolve(name)
    model_id = entry.load_id if entry else name
    public = entry.id if entry else name
    if any(n.name not in exclude for n in gw.fleet.replicas(model_id)):
        yield gw.router.route(name, set(exclude))  # loaded: no thread, no wait
        return
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["target"] = gw.router.route(name, set(exclude))
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=f"route:{public}", daemon=True).start()
    started = time.monotonic()
    while not done.wait(tick):
        yield progress_of(gw, model_id, public, started)
    if "error" in box:
        raise box["error"]
    yield box["target"]


def progress_of(gw: Gateway, model_id: str, public: str, started: float) -> Waiting:
    elapsed = time.monotonic() - started
    for node in gw.fleet.nodes.values():
        m = node.models.get(model_id)
        if m is not None and m.status == "loading":
            p = m.info.get("progress") or {}
            return Waiting(public, node.name, p.get("phase", "preparing"), p.get("fraction"),
                           p.get("eta_secs"), elapsed)
    return Waiting(public, None, "waiting", None, None, elapsed)
