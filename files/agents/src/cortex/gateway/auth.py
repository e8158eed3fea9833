"""API keys and entitlements: who is calling, and whether their caps allow one more request.

Keys come from `[entitlements]`; spend, and the holds of requests in flight, are kept in a
store shared by every worker and gateway host (SQLite by default, Redis across hosts), so
a cap holds however many workers and hosts a key's requests reach. Keys are compared in
constant time and never logged: logs and metrics carry the account and key_id only.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cortex.core.errors import ApiError, TooManyRequests, Unauthorized
from cortex.gateway.budget import Ask
from cortex.gateway.config import EntitlementsSection, KeyEntry
from cortex.gateway.store import DEFAULT_RETENTION_S, SpendStore, key_id_for, open_store

log = logging.getLogger(__name__)

# A hold lapses this long after its holder last renewed it (every third of it): the holds
# of a worker that died free its keys' caps within a minute.
HOLD_TTL_S = 60.0


@dataclass(frozen=True)
class Principal:
    account_id: str
    key_id: str
    entry: KeyEntry | None = None


ANONYMOUS = Principal("anonymous", "anonymous")


class Auth:
    def __init__(self, cfg: EntitlementsSection, admin_keys: list[str], state_dir: Path) -> None:
        self.cfg = cfg
        self.keys = cfg.keys
        for k in self.keys:
            k.key_id = k.key_id or key_id_for(k.key)
        self.admin_keys = admin_keys
        self._store: SpendStore | None = None
        self._store_spec = cfg.store
        self._state_dir = state_dir
        # This worker's holds in flight (they live in the store; kept here to renew them).
        self._holds: dict[str, Hold] = {}
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._renewer_pid = 0
        self.hold_ttl_s = HOLD_TTL_S

    @property
    def store(self) -> SpendStore:
        if self._store is None:  # opened lazily: after gunicorn forks, once per worker
            # Keep buckets for the longest configured window (a day at least).
            longest = max((k.window.seconds for k in self.keys if k.window.kind == "rolling"),
                          default=0)
            self._store = open_store(self._store_spec, self._state_dir,
                                     retention_s=max(DEFAULT_RETENTION_S, longest))
        return self._store

    def principal(self, key: str, allow_x_api_key: bool = False) -> Principal:
        """Who presents `key`. No key: anonymous unless auth is required. A key that is not
        configured is a 401 whenever keys are: a typo or a revoked key must fail loudly,
        not pass as anonymous (uncapped, unattributed). A gateway with no keys at all has
        nothing to check a key against, and SDKs insist on sending one: anonymous."""
        if key and self.keys:
            for entry in self.keys:
                if hmac.compare_digest(key.encode(), entry.key.encode()):
                    return Principal(entry.account_id, entry.key_id, entry)
            raise Unauthorized("unknown API key: use a key from [entitlements] keys"
                               + ("" if self.cfg.require_auth else
                                  ", or send none for anonymous access"),
                               code="invalid_api_key")
        if self.cfg.require_auth:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'"
                               + (" or 'x-api-key: <key>'" if allow_x_api_key else ""),
                               code="invalid_api_key")
        return ANONYMOUS

    def require_admin(self, key: str) -> None:
        # Empty keys are refused by the config; skipping them here as well means no
        # configuration can ever let a caller without a key in.
        if not key or not any(k and hmac.compare_digest(key.encode(), k.encode())
                              for k in self.admin_keys):
            raise Unauthorized("this route needs an admin key ([gateway] admin_keys)",
                               code="invalid_api_key")

    def admit(self, p: Principal, reserve: Callable[[], Ask | int]) -> Hold:
        """Check `p`'s caps, counting what every request in flight holds (in the shared
        store: all workers and gateway hosts), and hold what this one may spend until it
        settles with what it really spent. `reserve()` (asked only for a capped key) is
        the request's `Ask`, or a number of tokens to hold as they are. The hold's
        `output` is the most the request may generate: the caller writes it into the body
        (`budget.clamp`), so a key near its cap gets a shorter answer, never an overrun."""
        hold = Hold(self, p)
        entry = p.entry
        if entry is None or entry.hard_cap is None:
            return hold
        ask = reserve()
        if isinstance(ask, int):
            ask = Ask(max(0, ask))
        window = entry.window.seconds if entry.window.kind == "rolling" else 0
        now = time.time()
        grant = self.store.reserve(p.key_id, hold.id, cap=entry.hard_cap, window_s=window,
                                   want=ask.want, least=ask.least, ttl_s=self.hold_ttl_s,
                                   now=now)
        if not grant.ok:
            raise self._refusal(p, grant.spent + grant.held, grant.oldest, now, ask)
        hold.held, hold.ask, hold.stored = grant.tokens, ask, grant.tokens > 0
        if ask.generates:
            hold.output = grant.tokens - ask.input
        if hold.stored:
            self._live(hold)
        return hold

    def held(self, key_id: str) -> int:
        """Tokens the requests in flight hold against `key_id`'s cap (every worker's)."""
        return self.store.holding(key_id)

    def check_caps(self, p: Principal, now: float | None = None) -> None:
        """Refuse a key that has spent or holds its whole cap (before its body is read)."""
        entry = p.entry
        if entry is None or entry.hard_cap is None:
            return
        now = now or time.time()
        window = entry.window.seconds if entry.window.kind == "rolling" else 0
        spent, held, oldest = self.store.usage(p.key_id, window, now)
        if spent + held >= entry.hard_cap:
            raise self._refusal(p, spent + held, oldest, now, None)

    def _refusal(self, p: Principal, used: int, oldest: float | None, now: float,
                 ask: Ask | None) -> ApiError:
        entry = p.entry or KeyEntry("-", p.account_id)  # (only a capped key is refused)
        cap = entry.hard_cap or 0
        left = max(0, cap - used)
        why = (f"; this request needs about {ask.least} (its prompt"
               + (" and one token to generate)" if ask.generates else ")")
               if ask is not None and left else "")
        if entry.window.kind == "rolling":
            seconds = entry.window.seconds
            wait = (oldest + seconds - now) if oldest else seconds
            return TooManyRequests(
                f"key {p.key_id} spent or holds {used} tokens in the last {seconds} s "
                f"(cap {cap}, {left} left{why})", code="rate_limit_exceeded",
                retry_after=max(1, math.ceil(wait)))
        return ApiError(f"key {p.key_id} has used or holds {used} of its balance of "
                        f"{cap} tokens ({left} left{why})",
                        code="insufficient_quota", status=429, type="insufficient_quota")

    def count_call(self, p: Principal, address: str, now: float | None = None) -> None:
        """Count one token-counting call of `p` (anonymous: of `address`), a 429 past
        `count_requests_per_minute`: such calls spend nothing, but cost the neuron a
        render and a tokenization each."""
        limit = self.cfg.count_requests_per_minute
        if not limit:
            return
        who = p.key_id if p.entry is not None else f"anonymous@{address}"
        now = now or time.time()
        try:
            calls, ends = self.store.hit(f"count:{who}", 60, now)
        except Exception:  # a rate limit fails open: counting must not die with the store
            log.warning("counting a token-count call of %s failed", who, exc_info=True)
            return
        if calls > limit:
            raise TooManyRequests(
                f"{'key ' + p.key_id if p.entry else 'this address'} made more than {limit} "
                "token-counting calls this minute ([entitlements] count_requests_per_minute)",
                code="rate_limit_exceeded", retry_after=max(1, math.ceil(ends - now)))

    def record(self, p: Principal, tokens: int) -> None:
        if p.entry is not None and tokens > 0:
            self.store.record(p.key_id, tokens)

    # -- holds in flight: renewed while they run, so that only a dead worker's lapse --
    def _live(self, hold: Hold) -> None:
        with self._lock:
            self._holds[hold.id] = hold
            if self._renewer is None or not self._renewer.is_alive() \
                    or self._renewer_pid != os.getpid():
                self._renewer_pid = os.getpid()
                self._renewer = threading.Thread(target=self._renew, name="hold-renewer",
                                                 daemon=True)
                self._renewer.start()

    def _gone(self, hold: Hold) -> None:
        with self._lock:
            self._holds.pop(hold.id, None)

    def _renew(self) -> None:
        """Every third of the TTL, push back the expiry of this worker's holds; ends when
        it holds none (the next hold starts it again)."""
        while True:
            time.sleep(self.hold_ttl_s / 3)
            with self._lock:
                by_key: dict[str, list[str]] = {}
                for h in self._holds.values():
                    by_key.setdefault(h.principal.key_id, []).append(h.id)
                if not by_key:
                    self._renewer = None
                    return
            for key_id, ids in by_key.items():
                try:
                    self.store.renew(key_id, ids, self.hold_ttl_s)
                except Exception:  # the store is down: the next round tries again
                    log.exception("renewing %d holds of %s failed", len(ids), key_id)


@dataclass
class Hold:
    """Tokens held for one request in flight, in the shared store; `settle` records what
    it spent and drops the hold, once."""

    auth: Auth
    principal: Principal
    held: int = 0
    settled: bool = field(default=False)
    stored: bool = False  # a row (or key) in the store holds it
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    ask: Ask | None = None
    output: int | None = None  # the most the request may generate (None: no bound)

    def known(self, spent: int) -> None:
        """The request's real spend is known (the neuron's usage): hold that instead of
        the reservation until `settle` has stored it. The client may send its next request
        before this one's bookkeeping runs (it runs after the reply is on the wire); that
        request is then checked against what was spent, not against the reservation."""
        if self.stored and not self.settled:
            self.held = max(0, spent)
            self.auth.store.adjust(self.principal.key_id, self.id, self.held)

    def settle(self, spent: int) -> None:
        if self.settled:
            return
        self.settled = True
        if not self.stored:
            self.auth.record(self.principal, spent)
            return
        try:
            # The spend is stored and the hold dropped in one step: another request's
            # check sees this one's tokens either held or spent, never both or neither.
            self.auth.store.settle(self.principal.key_id, self.id, max(0, spent))
        finally:
            self.held, self.stored = 0, False
            self.auth._gone(self)
