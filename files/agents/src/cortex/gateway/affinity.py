"""Which replica a request goes to when its model is loaded on several: sessions stick.

A replica that served a session's last turn holds its prompt in its cache; the next turn
sent there skips that prefill (seconds on a GPU for a 20k-token agent prompt, minutes on
a CPU). Every gateway worker and host comes to the same answer with nothing shared between
them: from the request, the replica set, and what the neurons report.

- `affinity_key`: what identifies a session, in this order: the session headers agent
  clients send (Claude Code, Codex, OpenCode), Codex's `prompt_cache_key`, the OpenAI
  `user` / Anthropic `metadata.user_id`, else a hash over the request's prefix up to its
  first user message (stable across a session's turns, different between sessions).
  Neurons know a session by its `tag` (a hash of the account and the key) only.
- Where a session lives: the replica that served it last, as this worker saw it or as
  the neurons list it (core.recent_sessions, in /health): a session moves only when that
  replica is full, much busier than the least busy one, or gone; never because a replica
  was added. A session no replica has served (a new one, or one long idle) goes to:
- `rendezvous`: the replicas in the key's order of preference (highest random weight), so
  that every worker puts a new session on the same replica without telling the others,
  and sessions spread evenly over the replicas there are.
- `place`: that replica (its last, else the key's first), unless it is full or much
  busier than the least busy one (SGLang's router's imbalance test, in slots): then the
  least busy one that is not full, as a spill.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cortex.core import fastjson
from cortex.core.recent_sessions import Newest
from cortex.gateway.placement import COLD, LEAST_BUSY, SPILL, Choice, InFlight, Request

if TYPE_CHECKING:
    from cortex.gateway.fleet import Node

# Routing reasons (cortex_routing_total{reason}) beside placement.py's (least_busy, spill,
# cold): a session on its home replica, by the key its client sent or by its prefix.
AFFINITY = "affinity"
PREFIX = "prefix"
REASONS = (AFFINITY, PREFIX, SPILL, LEAST_BUSY, COLD)

# Session headers, first match wins (names as the data plane passes them: lower case).
SESSION_HEADERS = (
    "x-claude-code-session-id",  # Claude Code
    "session-id", "session_id",  # Codex (beside prompt_cache_key in the body)
    "x-session-id",  # OpenCode
)
MAX_KEY_CHARS = 512  # a longer value is hashed like any other; only its start is kept
# Claude Code's first system block names its build and changes on every request: it says
# nothing about the conversation, and hashing it would give every turn a new key.
_VOLATILE_PREFIX = "x-anthropic-billing-header:"


@dataclass(frozen=True, slots=True)
class Key:
    value: str
    reason: str  # AFFINITY (the client said which session) or PREFIX (we worked it out)
    tag: str = ""  # its name to neurons (`tagged`); "" until then

    def tagged(self, account: str) -> Key:
        """With its tag: a hash of the account and the key, so that two tenants' sessions
        never share one and a client's session id never leaves the gateway."""
        digest = hashlib.blake2b(f"{account}\x1f{self.value}".encode(), digest_size=8)
        return Key(self.value, self.reason, digest.hexdigest())


def affinity_key(headers: Mapping[str, str], body: Mapping[str, Any]) -> Key | None:
    """The session `body` belongs to, or None when nothing identifies it (no messages)."""
    for name in SESSION_HEADERS:
        value = headers.get(name)
        if value:
            return Key(f"h:{value[:MAX_KEY_CHARS]}", AFFINITY)
    value = body.get("prompt_cache_key")
    if isinstance(value, str) and value:
        return Key(f"c:{value[:MAX_KEY_CHARS]}", AFFINITY)
    value = body.get("user")
    if isinstance(value, str) and value:
        return Key(f"u:{value[:MAX_KEY_CHARS]}", AFFINITY)
    meta = body.get("metadata")
    value = meta.get("user_id") if isinstance(meta, dict) else None
    if isinstance(value, str) and value:
        return Key(f"u:{value[:MAX_KEY_CHARS]}", AFFINITY)
    digest = prefix_digest(body)
    return Key(f"p:{digest}", PREFIX) if digest else None


def prefix_digest(body: Mapping[str, Any]) -> str:
    """A hash over the prompt's parts in the order a chat template renders them (system,
    tools, then messages) up to and including the first user message; "" if it has none.

    Every turn of a conversation starts with those parts, so its turns share the digest;
    conversations that share a system prompt and tools (agents of one kind do) part at
    their first user message, however far into the body that is. One serialisation and
    one SHA-256 (hashed by the CPU's SHA instructions): 60 us for Claude Code's 82 KB
    request, where a hash a part took 110 (blake2b, which has no such instructions)."""
    parts: list[Any] = []
    for part, anchor in _parts(body):
        parts.append(part)
        if anchor:
            return hashlib.sha256(fastjson.dumps(parts)).hexdigest()[:32]
    return ""  # no user message: nothing that tells one conversation from another


def _parts(body: Mapping[str, Any]) -> Iterable[tuple[Any, bool]]:
    """(part, is the anchor) in rendering order, for the three dialects' bodies: OpenAI
    chat (`messages`), Anthropic (`system`, `messages`), Responses (`instructions`,
    `input`); a completions `prompt` is one part, its own anchor."""
    system = body.get("system")
    if isinstance(system, list):
        for block in system:
            text = block.get("text") if isinstance(block, dict) else None
            if not (isinstance(text, str) and text.startswith(_VOLATILE_PREFIX)):
                yield block, False
    elif system is not None:
        yield system, False
    if body.get("instructions") is not None:
        yield body["instructions"], False
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            yield tool, False
    turns = body.get("messages")
    if turns is None:
        turns = body.get("input")
    if isinstance(turns, str):  # Responses' plain-text input: one user message
        yield turns, True
        return
    if isinstance(turns, list):
        for turn in turns:
            yield turn, _is_user(turn)
        return
    prompt = body.get("prompt")
    if prompt is not None:
        yield prompt, True


def _is_user(turn: Any) -> bool:
    if isinstance(turn, str):
        return True  # Responses' input list may hold plain strings: user text
    return isinstance(turn, dict) and turn.get("role") == "user"


# -- placement -----------------------------------------------------------------------------
def _weight(key: str, name: str) -> int:
    digest = hashlib.blake2b(f"{key}\x1f{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(key: str, names: Iterable[str]) -> list[str]:
    """`names` in `key`'s order of preference: highest weight first (ties by name)."""
    return sorted(names, key=lambda n: (-_weight(key, n), n))


@dataclass(frozen=True, slots=True)
class Replica:
    name: str
    load: int  # requests on it now (running + queued), as the router counts them
    slots: int = 1  # sequences it decodes at once
    capacity: int = 0  # the load at which it refuses more (slots + queue); 0 = not known

    @property
    def full(self) -> bool:
        return bool(self.capacity) and self.load >= self.capacity


@dataclass(frozen=True, slots=True)
class Balance:
    """SGLang's router spills a request to the least busy worker when the two differ by
    more than `abs 64` requests and by a factor of `rel 1.5`: sized for engines that batch
    hundreds. A llama.cpp replica runs a few slots, so the absolute test is in slots of
    the chosen replica: by default, spill once it holds a whole batch more than the least
    busy one (and 1.5x its load)."""

    abs_slots: float = 1.0
    rel: float = 1.5

    def imbalanced(self, chosen: Replica, least: Replica) -> bool:
        return (chosen.load - least.load > self.abs_slots * max(chosen.slots, 1)
                and chosen.load > self.rel * least.load)


def order(key: Key | None, replicas: Sequence[Replica], balance: Balance = Balance(),
          last: str | None = None) -> list[tuple[Replica, str]]:
    """Every replica in the order to try them (the next when one refuses as full), each
    with its reason: the choice (`place`) first, then the key's order of preference (no
    key: the least busy first; full ones last), as spills. `last`: the replica that
    served the session last (None: none of `replicas`). `replicas` must not be empty."""
    ranked = (_preference(key, replicas, last) if key is not None
              else sorted(replicas, key=lambda r: (r.load, r.name)))
    chosen, reason = _choose(key, ranked, balance)
    rest = sorted(ranked, key=lambda r: r.full)  # (stable: the preference stays within each)
    return [(chosen, reason)] + [(r, SPILL) for r in rest if r is not chosen]


def place(key: Key | None, replicas: Sequence[Replica], balance: Balance = Balance(),
          last: str | None = None) -> tuple[Replica, str]:
    """The replica for a request with `key` (None: no key, or the least_busy policy), and
    the reason (one of REASONS): `order`'s first."""
    return order(key, replicas, balance, last)[0]


def _choose(key: Key | None, ranked: list[Replica], balance: Balance
            ) -> tuple[Replica, str]:
    least = min(ranked, key=lambda r: (r.load, r.name))
    if key is None or len(ranked) == 1:
        return (least, LEAST_BUSY) if key is None else (least, key.reason)
    home = ranked[0]
    if not home.full and not balance.imbalanced(home, least):
        return home, key.reason
    # Spill as SGLang's router does: to the least busy replica that is not full (ties: the
    # key's order, so that workers that see the same loads agree). Served there, the
    # session lives there from then on (its prompt is cached there now): a spill also
    # evens out where sessions live.
    chosen = min((r for r in ranked if not r.full), key=lambda r: r.load, default=least)
    return chosen, SPILL


def _preference(key: Key, replicas: Sequence[Replica], last: str | None) -> list[Replica]:
    """The session's last replica, then the rest in the key's rendezvous order."""
    by_name = {r.name: r for r in replicas}
    names = rendezvous(key.value, by_name)
    if last in by_name:
        names.remove(last)
        names.insert(0, last)
    return [by_name[n] for n in names]


class LastServed:
    """Where this worker saw each session served last: (model, tag) -> (node, when), the
    newest `keep`. The neurons' lists say the same for every worker, a poll later."""

    def __init__(self, keep: int = 16384) -> None:
        self._at: Newest[tuple[str, str], tuple[str, float]] = Newest(keep)

    def record(self, load_id: str, tag: str, node: str, at: float) -> None:
        self._at.put((load_id, tag), (node, at))

    def where(self, load_id: str, tag: str, replicas: Sequence[Node]) -> str | None:
        """The replica among `replicas` that served the session last (by this worker's
        record or its neuron's list, whichever is newer), if any did."""
        node, at = self._at.get((load_id, tag)) or (None, float("-inf"))
        names = {n.name for n in replicas}
        best = node if node in names else None
        best_at = at if best else float("-inf")
        for n in replicas:
            m = n.loaded(load_id)
            seen = m.sessions.get(tag) if m is not None else None
            if seen is not None and seen > best_at:
                best, best_at = n.name, seen
        return best


class Affinity:
    """The routing policy (`placement.Placement`) over the fleet's replicas. `sticky`
    (`[routing] policy = "affinity"`): a session on the replica holding its prefix (`place`);
    not sticky (`least_busy`): every request on the least busy replica, by the same `order`
    with no key, so the least-busy rule has one owner."""

    def __init__(self, in_flight: InFlight, balance: Balance = Balance(), *,
                 sticky: bool = True) -> None:
        self.in_flight, self.balance, self.sticky = in_flight, balance, sticky
        self.last = LastServed()

    def session(self, request: Request, account: str) -> Key | None:
        """The request's session, tagged for `account` (None: not sticky, an embedding, or
        nothing identifies one). The caller keeps it on the request for `order`."""
        if not self.sticky or request.path.endswith("/embeddings"):
            return None  # (an embedding has no session: whichever replica is least busy)
        key = affinity_key(request.headers, request.body)
        return key.tagged(account) if key is not None else None

    def order(self, request: Request, replicas: list[Node]) -> list[Choice]:
        load_id = request.model.load_id
        key = request.session
        by_name, loads = {}, []
        for n in replicas:
            m = n.loaded(load_id)
            by_name[n.name] = n
            loads.append(Replica(n.name, self.in_flight.load(n, load_id),
                                 max(m.slots, 1) if m else 1, m.capacity if m else 0))
        last = self.last.where(load_id, key.tag, replicas) if key is not None else None
        return [Choice(by_name[r.name], reason)
                for r, reason in order(key, loads, self.balance, last)]

    def served(self, request: Request, node: Node) -> None:
        """`node` took the request (its neuron admitted it): its session lives there now."""
        key = request.session
        if key is not None:
            self.last.record(request.model.load_id, key.tag, node.name, time.time())


POLICIES = ("affinity", "least_busy")


def policy(name: str, balance: Balance = Balance()) -> Callable[[InFlight], Affinity]:
    """The placement factory (InFlight -> policy) for `[routing] policy` (POLICIES)."""
    return lambda in_flight: Affinity(in_flight, balance, sticky=name != "least_busy")
