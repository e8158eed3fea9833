"""Which loaded replica a request tries first: the placement policy, and the load it reads.

A replica's load is what its neuron last reported (`in_flight + queue_depth`, polled) plus
what this worker has sent it and not yet seen finish (`InFlight`): the poll is up to a
poll interval old, so without our own count every request of a burst would see the same
"least busy" replica and all of them would go there.

The policy is one object: `session` reads the request's session once (kept on the
request); `order`, given the request and the model's replicas (`Fleet.replicas`, routable
with the model loaded), gives the replicas to try, best first, each with the rule that put
it there (`cortex_routing_total{reason}`); `served` hears which replica took it. The relay's
`Dispatcher` tries them in that order, moving on when a replica refuses as full. The
policies (`[routing] policy`: affinity, least_busy) are affinity.py's `Affinity`, the one
owner of the rule; the composition root gives one to the dispatcher.
"""

from __future__ import annotations

import threading
import time
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
    session: Any  # what the policy's `session` made of it (affinity.Key), set before `order`


class Placement(Protocol):
    def session(self, request: Request, account: str) -> Any:
        """The request's session, for `account` (None: none), read once per request."""
        ...

    def order(self, request: Request, replicas: list[Node]) -> list[Choice]:
        """`replicas` (not empty) in the order to try them, each with its reason."""
        ...

    def served(self, request: Request, node: Node) -> None:
        """`node` admitted the request."""
        ...


class InFlight:
    """Requests this worker has sent to each (node, model) and not yet seen finish."""

    def __init__(self) -> None:
        # (node, model) -> when each request still in flight was sent (time.time())
        self._sent: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def add(self, node: str, load_id: str) -> float:
        """A request sent: its send time, the token to give `done`."""
        at = time.time()
        with self._lock:
            self._sent.setdefault((node, load_id), []).append(at)
        return at

    def done(self, node: str, load_id: str, sent: float | None = None) -> None:
        """The request sent at `sent` (None: the oldest) has finished."""
        with self._lock:
            times = self._sent.get((node, load_id))
            if not times:
                return
            if sent is not None and sent in times:
                times.remove(sent)
            else:
                times.pop(0)
            if not times:
                del self._sent[(node, load_id)]

    def of(self, node: str, load_id: str, after: float = 0.0) -> int:
        """Requests in flight to `node`, those sent after `after` only if given."""
        times = self._sent.get((node, load_id), ())
        return sum(1 for t in list(times) if t > after) if after else len(times)

    def load(self, node: Node, load_id: str) -> int:
        """The replica's load: its neuron's last report plus what we sent it since that
        poll began (what we sent before it, the neuron counted already: counted twice, a
        session's own concurrent turns made its home look twice as busy and spill)."""
        m = node.loaded(load_id)
        return (m.busy if m is not None else 0) + self.of(node.name, load_id, node.counted_at)
