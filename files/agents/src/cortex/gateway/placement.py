"""Which loaded replica a request tries first: the placement policy, and the load it reads.

A replica's load is what its neuron last reported (`in_flight + queue_depth`, polled) plus
what this worker has sent it and not yet seen finish (`InFlight`): the poll is up to a
poll interval old, so without our own count every request of a burst would see the same
"least busy" replica and all of them would go there.

The policy is one object with one method, `order`: given the request and the model's
replicas (`Fleet.replicas`, routable with the model loaded), the replicas to try, best
first, each with the rule that put it there (`cortex_routing_total{reason}`). The relay's
`Dispatcher` tries them in that order, moving on when a replica refuses as full. The
policies (`[routing] policy`: affinity, least_busy) are affinity.py's `Affinity`, the one
owner of the rule; the composition root gives one to the dispatcher.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cortex.gateway.catalogue import ModelRef
    from cortex.gateway.fleet import Node

# cortex_routing_total's reasons: how the replica that served a request was chosen.
LEAST_BUSY = "least_busy"  # the least loaded replica
SPILL = "spill"  # a later choice, after the ones before it refused as full
COLD = "cold"  # no replica was loaded: this request's cold load made one


@dataclass(frozen=True, slots=True)
class Choice:
    node: Node
    reason: str


class Request(Protocol):
    """What a policy may read of a request: where it goes and what it says."""

    path: str
    model: ModelRef
    body: dict[str, Any]
    headers: dict[str, str]  # the client's end-to-end headers, lower-cased


class Placement(Protocol):
    def order(self, request: Request, replicas: list[Node]) -> list[Choice]:
        """`replicas` (not empty) in the order to try them, each with its reason."""
        ...


class InFlight:
    """Requests this worker has sent to each (node, model) and not yet seen finish."""

    def __init__(self) -> None:
        self._sent: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def add(self, node: str, load_id: str) -> None:
        with self._lock:
            self._sent[(node, load_id)] = self._sent.get((node, load_id), 0) + 1

    def done(self, node: str, load_id: str) -> None:
        with self._lock:
            left = self._sent.get((node, load_id), 0) - 1
            if left > 0:
                self._sent[(node, load_id)] = left
            else:
                self._sent.pop((node, load_id), None)

    def of(self, node: str, load_id: str) -> int:
        return self._sent.get((node, load_id), 0)

    def load(self, node: Node, load_id: str) -> int:
        """The replica's load: its neuron's last report plus what we sent it since."""
        m = node.loaded(load_id)
        return (m.busy if m is not None else 0) + self.of(node.name, load_id)
