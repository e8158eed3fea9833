"""API keys and entitlements: who is calling, and whether their caps allow one more request.

Keys come from `[entitlements]`; spend is kept in a store shared by every worker and
gateway host (SQLite by default, Redis across hosts). Keys are compared in constant time
and never logged: logs and metrics carry the account and key_id only.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cortex.core.errors import ApiError, TooManyRequests, Unauthorized
from cortex.gateway.config import EntitlementsSection, KeyEntry
from cortex.gateway.store import DEFAULT_RETENTION_S, SpendStore, key_id_for, open_store


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
        # Tokens that requests in flight in this worker may still spend, per key: counted
        # against the cap at admission, so concurrent requests cannot all pass one check.
        self._held: dict[str, int] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

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

    def admit(self, p: Principal, reserve: Callable[[], int]) -> Hold:
        """Check `p`'s caps, counting what requests in flight hold, then hold `reserve()`
        tokens for this one until it settles with what it really spent (estimated only for
        a capped key)."""
        hold = Hold(self, p)
        if p.entry is None or p.entry.hard_cap is None:
            return hold
        with self._key_lock(p.key_id):
            self._check(p)
            self._rehold(hold, max(0, reserve()))
        return hold

    def held(self, key_id: str) -> int:
        """Tokens this worker's requests in flight hold against `key_id`'s cap."""
        return self._held.get(key_id, 0)

    def _key_lock(self, key_id: str) -> threading.Lock:
        # One lock per key orders its cap checks with its settlements in this worker: a
        # check sees a finished request's spend either held or stored, never both (a
        # spurious 429) and never neither (a cap overrun).
        lock = self._locks.get(key_id)
        if lock is None:
            with self._lock:
                lock = self._locks.setdefault(key_id, threading.Lock())
        return lock

    def _rehold(self, hold: Hold, tokens: int) -> None:
        """Hold `tokens` for `hold` instead of what it holds now (0 releases it); the
        caller holds the key's lock."""
        key_id = hold.principal.key_id
        left = self._held.get(key_id, 0) - hold.held + tokens
        if left > 0:
            self._held[key_id] = left
        else:
            self._held.pop(key_id, None)
        hold.held = tokens

    def check_caps(self, p: Principal, now: float | None = None) -> None:
        if p.entry is None or p.entry.hard_cap is None:
            return
        with self._key_lock(p.key_id):
            self._check(p, now)

    def _check(self, p: Principal, now: float | None = None) -> None:
        entry = p.entry
        if entry is None or entry.hard_cap is None:
            return
        now = now or time.time()
        held = self._held.get(p.key_id, 0)
        if entry.window.kind == "rolling":
            spent, oldest = self.store.window(p.key_id, entry.window.seconds, now)
            spent += held
            if spent >= entry.hard_cap:
                wait = (oldest + entry.window.seconds - now) if oldest else entry.window.seconds
                raise TooManyRequests(
                    f"key {p.key_id} spent or holds {spent} tokens in the last "
                    f"{entry.window.seconds} s "
                    f"(cap {entry.hard_cap})", code="rate_limit_exceeded",
                    retry_after=max(1, math.ceil(wait)))
        elif self.store.total(p.key_id) + held >= entry.hard_cap:
            raise ApiError(f"key {p.key_id} has used its balance of {entry.hard_cap} tokens",
                           code="insufficient_quota", status=429, type="insufficient_quota")

    def record(self, p: Principal, tokens: int) -> None:
        if p.entry is not None and tokens > 0:
            self.store.record(p.key_id, tokens)


@dataclass
class Hold:
    """Tokens held for one request in flight; `settle` records what it spent, once."""

    auth: Auth
    principal: Principal
    held: int = 0
    settled: bool = field(default=False)

    def known(self, spent: int) -> None:
        """The request's real spend is known (the neuron's usage): hold that instead of
        the reservation until `settle` has stored it. The client may send its next request
        before this one's bookkeeping runs (it runs after the reply is on the wire); that
        request is then checked against what was spent, not against the reservation."""
        if self.held and not self.settled:
            with self.auth._key_lock(self.principal.key_id):
                self.auth._rehold(self, max(0, spent))

    def settle(self, spent: int) -> None:
        if self.settled:
            return
        self.settled = True
        if not self.held:  # nothing held: no cap to keep in step with
            self.auth.record(self.principal, spent)
            return
        with self.auth._key_lock(self.principal.key_id):
            try:
                self.auth.record(self.principal, spent)
            finally:
                self.auth._rehold(self, 0)
