"""Per-key token spend, shared by every gunicorn worker and, with Redis, every gateway host.

Two numbers per key: the balance (all tokens ever spent) and the spend inside a rolling
window. Rolling spend lives in time buckets, so storage grows with time, not with requests.
Each record lands in one bucket per tier: 1 s buckets serve windows up to 15 minutes
(exact to the second), 60 s buckets up to a day, hour buckets up to 31 days and day buckets
beyond, so a window sums at most ~1500 buckets whatever its length. A window counts every
bucket that overlaps it, so it errs toward the cap, by less than one bucket. Tiers past
``retention_s`` (the longest window a caller may ask about; a day unless the configured
windows are longer) are not written, so the common case pays for two tiers only.

Beside the spend, the store keeps the **holds** of capped keys' requests in flight: the
tokens each may still spend, counted against the cap by every worker and gateway host. A
hold is taken in the same transaction as the check it passed (`reserve`), so concurrent
requests cannot all pass one check, and it expires unless its holder renews it, so the
holds of a worker that crashed lapse on their own (`renew`, every third of the TTL).
`settle` stores the spend and drops the hold in one transaction.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# (bucket width, longest window it serves), finest first.
TIERS = ((1, 900), (60, 86400), (3600, 31 * 86400), (86400, 10 * 366 * 86400))
DEFAULT_RETENTION_S = 86400


@dataclass(frozen=True)
class Grant:
    """What `reserve` decided: the tokens now held (0 if refused), and what it saw."""

    ok: bool
    tokens: int  # held for the request
    spent: int  # in the window (or the balance), before this request
    held: int  # by the key's other requests in flight
    oldest: float | None = None  # end of the oldest spend in the window (rolling only)


class SpendStore(Protocol):
    def record(self, key_id: str, tokens: int, now: float | None = None) -> None:
        """Add ``tokens`` (prompt + completion) spent by ``key_id`` at ``now``."""

    def total(self, key_id: str) -> int:
        """All tokens ever spent by ``key_id`` (the balance window)."""

    def window(self, key_id: str, seconds: float, now: float | None = None
               ) -> tuple[int, float | None]:
        """``window_total`` and ``oldest_in_window`` at once (one query)."""

    def window_total(self, key_id: str, seconds: float, now: float | None = None) -> int:
        """Tokens spent by ``key_id`` in the ``seconds`` before ``now``."""

    def oldest_in_window(self, key_id: str, seconds: float,
                         now: float | None = None) -> float | None:
        """When the oldest spend still in the window happened (rounded up to its bucket's
        end, so ``oldest + seconds - now`` is exactly when it stops counting), or None."""

    def reserve(self, key_id: str, hold_id: str, *, cap: int, window_s: float, want: int,
                least: int, ttl_s: float, now: float | None = None) -> Grant:
        """Atomically: what ``key_id`` spent (in the last ``window_s`` seconds; 0: its
        balance) and holds; then, if ``cap`` leaves at least ``least`` tokens, hold
        ``min(want, left)`` as ``hold_id`` for ``ttl_s`` seconds."""

    def adjust(self, key_id: str, hold_id: str, tokens: int) -> None:
        """Hold ``tokens`` for ``hold_id`` instead, if it is still held."""

    def renew(self, key_id: str, hold_ids: Iterable[str], ttl_s: float,
              now: float | None = None) -> None:
        """Push back the expiry of those of ``hold_ids`` still held."""

    def settle(self, key_id: str, hold_id: str, tokens: int, now: float | None = None
               ) -> None:
        """Record ``tokens`` spent and drop ``hold_id``, in one transaction."""

    def usage(self, key_id: str, window_s: float, now: float | None = None
              ) -> tuple[int, int, float | None]:
        """(spent in the window or the balance, held by live holds, oldest in window)."""

    def holding(self, key_id: str, now: float | None = None) -> int:
        """Tokens the live holds of ``key_id`` hold."""

    def hit(self, name: str, window_s: int, now: float | None = None) -> tuple[int, float]:
        """Count one call of ``name`` in the current fixed window of ``window_s`` seconds:
        (calls in it so far, this one included; when it ends). A rate limit's counter."""

    def close(self) -> None: ...


def _cooperative() -> bool:
    """Whether this process runs under gevent's monkey patching (a gunicorn gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("time")


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc)


def key_id_for(key: str) -> str:
    """A stable id for logs, headers and the store; the key itself never leaves config."""
    return "k_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class _Buckets:
    """The bucket arithmetic both stores share; a bucket is named by its width and start."""

    def __init__(self, retention_s: int) -> None:
        if retention_s < 1:
            raise ValueError(f"retention_s must be >= 1, got {retention_s}")
        self.retention_s = int(retention_s)
        # (width, longest window it serves here): tiers up to the first that covers
        # retention_s; longer tiers would only cost writes.
        self.tiers: list[tuple[int, int]] = []
        for width, longest in TIERS:
            self.tiers.append((width, min(longest, self.retention_s)))
            if longest >= self.retention_s:
                break
        if self.tiers[-1][1] < self.retention_s:
            raise ValueError(f"retention_s must be <= {TIERS[-1][1]}, got {retention_s}")

    def buckets(self, now: float) -> list[tuple[int, int, int]]:
        """(width, start, keep_s) of the buckets a spend at ``now`` goes to."""
        return [(w, math.floor(now / w) * w, keep) for w, keep in self.tiers]

    def span(self, seconds: float, now: float) -> tuple[int, int, int]:
        """Width, first and last bucket start overlapping the window (now - seconds, now]."""
        if seconds > 0:
            for w, longest in self.tiers:
                if seconds <= longest:
                    return w, math.floor((now - seconds) / w) * w, math.floor(now / w) * w
        raise ValueError(f"window of {seconds} s outside (0, retention_s={self.retention_s}]")

    def record(self, key_id: str, tokens: int, now: float | None = None) -> None:
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if tokens:
            self._record(key_id, tokens, time.time() if now is None else now)

    def window(self, key_id: str, seconds: float, now: float | None = None
               ) -> tuple[int, float | None]:
        """(tokens spent in the window, end of its oldest counted bucket) in one query."""
        return self._window(key_id, seconds, time.time() if now is None else now)

    def window_total(self, key_id: str, seconds: float, now: float | None = None) -> int:
        return self.window(key_id, seconds, now)[0]

    def oldest_in_window(self, key_id: str, seconds: float,
                         now: float | None = None) -> float | None:
        return self.window(key_id, seconds, now)[1]

    def reserve(self, key_id: str, hold_id: str, *, cap: int, window_s: float, want: int,
                least: int, ttl_s: float, now: float | None = None) -> Grant:
        if want < 0 or least < 0 or ttl_s <= 0:
            raise ValueError(f"want, least >= 0 and ttl_s > 0, got {want}, {least}, {ttl_s}")
        return self._reserve(key_id, hold_id, cap, window_s, want, least, ttl_s,
                             time.time() if now is None else now)

    def settle(self, key_id: str, hold_id: str, tokens: int, now: float | None = None
               ) -> None:
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        self._settle(key_id, hold_id, tokens, time.time() if now is None else now)

    def usage(self, key_id: str, window_s: float, now: float | None = None
              ) -> tuple[int, int, float | None]:
        now = time.time() if now is None else now
        spent, oldest = self.window(key_id, window_s, now) if window_s else \
            (self.total(key_id), None)
        return spent, self.holding(key_id, now), oldest


def decide(cap: int, spent: int, held: int, want: int, least: int) -> tuple[bool, int]:
    """The one rule of a reservation (both stores): refused once nothing is left or less
    than ``least`` is; else hold as much of ``want`` as is left."""
    left = cap - spent - held
    if left <= 0 or left < least:
        return False, 0
    return True, min(want, left)


class SQLiteStore(_Buckets):
    """One file on the gateway host: any number of worker processes, survives restarts."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS spend_total (
            key_id TEXT PRIMARY KEY, tokens INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS spend_bucket (
            key_id TEXT NOT NULL, width INTEGER NOT NULL, start INTEGER NOT NULL,
            tokens INTEGER NOT NULL, PRIMARY KEY (key_id, width, start)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS spend_hold (
            key_id TEXT NOT NULL, hold_id TEXT NOT NULL, tokens INTEGER NOT NULL,
            expires REAL NOT NULL, PRIMARY KEY (key_id, hold_id)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS rate_hit (
            name TEXT PRIMARY KEY, start INTEGER NOT NULL, hits INTEGER NOT NULL)
            WITHOUT ROWID;
    """

    def __init__(self, path: str | Path, *, retention_s: int = DEFAULT_RETENTION_S,
                 busy_timeout_ms: int = 5000) -> None:
        super().__init__(retention_s)
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        # (pid, connection, lock), made on first use in each process: an sqlite connection
        # must never cross a fork, and gunicorn forks workers after the app is imported.
        self._state: tuple[int, sqlite3.Connection, threading.Lock] | None = None
        self._inherited: list[sqlite3.Connection] = []

    def _conn(self) -> tuple[sqlite3.Connection, threading.Lock]:
        state = self._state
        if state is None or state[0] != os.getpid():
            if state is not None:
                # The parent's connection: keep a reference so that garbage collection never
                # closes (and maybe checkpoints) it from this process.
                self._inherited.append(state[1])
            # Threads racing here each get a working connection; the last one is kept.
            state = (os.getpid(), self._connect(), threading.Lock())
            self._state = state
        return state[1], state[2]

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Under gevent a busy wait inside sqlite would stall the whole worker (every
        # greenlet) for up to busy_timeout: there sqlite gives up at once and _retry waits
        # with the (patched, cooperative) time.sleep. Threads may block; others still run.
        self._native_wait_ms = 0 if _cooperative() else int(self._busy_timeout_ms)
        return self._retry(self._open)

    def _open(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are the explicit BEGIN IMMEDIATE below. One
        # connection per process, serialised by a lock.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self._native_wait_ms / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._native_wait_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: no fsync per request; a power cut may lose the last few records.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(self._SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` again while another process holds the database, up to busy_timeout."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                left = deadline - time.monotonic()
                if not _busy(exc) or left <= 0:
                    raise
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.05)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` in one write transaction, retried while another process writes."""
        conn, lock = self._conn()

        def write() -> T:
            with lock, conn:  # `with conn` commits, or rolls back on an error
                # IMMEDIATE takes the write lock up front, so a concurrent writer is told
                # busy at once instead of failing to upgrade a read lock half way through.
                conn.execute("BEGIN IMMEDIATE")
                return fn(conn)

        return self._retry(write)

    def _add(self, conn: sqlite3.Connection, key_id: str, tokens: int, now: float) -> None:
        conn.execute(
            "INSERT INTO spend_total (key_id, tokens) VALUES (?, ?) ON CONFLICT "
            "(key_id) DO UPDATE SET tokens = tokens + excluded.tokens",
            (key_id, tokens))
        for width, start, keep in self.buckets(now):
            conn.execute(
                "INSERT INTO spend_bucket (key_id, width, start, tokens) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (key_id, width, start) "
                "DO UPDATE SET tokens = tokens + excluded.tokens",
                (key_id, width, start, tokens))
            # Dropping this key's expired buckets here bounds its rows; an index
            # seek that usually deletes nothing.
            conn.execute(
                "DELETE FROM spend_bucket WHERE key_id = ? AND width = ? AND start < ?",
                (key_id, width, math.floor((now - keep) / width) * width))

    def _record(self, key_id: str, tokens: int, now: float) -> None:
        self._write(lambda conn: self._add(conn, key_id, tokens, now))

    def _spent(self, conn: sqlite3.Connection, key_id: str, window_s: float, now: float
               ) -> tuple[int, float | None]:
        if not window_s:
            row = conn.execute("SELECT tokens FROM spend_total WHERE key_id = ?",
                               (key_id,)).fetchone()
            return (row[0] if row else 0), None
        width, lo, hi = self.span(window_s, now)
        total, oldest = conn.execute(
            "SELECT COALESCE(SUM(tokens), 0), MIN(start) FROM spend_bucket "
            "WHERE key_id = ? AND width = ? AND start BETWEEN ? AND ?",
            (key_id, width, lo, hi)).fetchone()
        return total, None if oldest is None else float(oldest + width)

    def _reserve(self, key_id: str, hold_id: str, cap: int, window_s: float, want: int,
                 least: int, ttl_s: float, now: float) -> Grant:
        def txn(conn: sqlite3.Connection) -> Grant:
            # Lapsed holds (a worker that died with requests in flight) go first.
            conn.execute("DELETE FROM spend_hold WHERE key_id = ? AND expires <= ?",
                         (key_id, now))
            held = conn.execute("SELECT COALESCE(SUM(tokens), 0) FROM spend_hold "
                                "WHERE key_id = ?", (key_id,)).fetchone()[0]
            spent, oldest = self._spent(conn, key_id, window_s, now)
            ok, tokens = decide(cap, spent, held, want, least)
            if tokens:
                conn.execute("INSERT OR REPLACE INTO spend_hold (key_id, hold_id, tokens, "
                             "expires) VALUES (?, ?, ?, ?)", (key_id, hold_id, tokens,
                                                              now + ttl_s))
            return Grant(ok, tokens, spent, held, oldest)

        return self._write(txn)

    def adjust(self, key_id: str, hold_id: str, tokens: int) -> None:
        self._write(lambda conn: conn.execute(
            "UPDATE spend_hold SET tokens = ? WHERE key_id = ? AND hold_id = ?",
            (max(0, tokens), key_id, hold_id)))

    def renew(self, key_id: str, hold_ids: Iterable[str], ttl_s: float,
              now: float | None = None) -> None:
        expires = (time.time() if now is None else now) + ttl_s
        ids = [(expires, key_id, h) for h in hold_ids]
        if ids:
            self._write(lambda conn: conn.executemany(
                "UPDATE spend_hold SET expires = ? WHERE key_id = ? AND hold_id = ?", ids))

    def _settle(self, key_id: str, hold_id: str, tokens: int, now: float) -> None:
        def txn(conn: sqlite3.Connection) -> None:
            if tokens:
                self._add(conn, key_id, tokens, now)
            conn.execute("DELETE FROM spend_hold WHERE key_id = ? AND hold_id = ?",
                         (key_id, hold_id))

        self._write(txn)

    def hit(self, name: str, window_s: int, now: float | None = None) -> tuple[int, float]:
        start = math.floor((time.time() if now is None else now) / window_s) * window_s
        hits = self._write(lambda conn: conn.execute(
            # (SET reads the row's old values: a new window starts again at 1.)
            "INSERT INTO rate_hit (name, start, hits) VALUES (?, ?, 1) ON CONFLICT (name) "
            "DO UPDATE SET hits = CASE WHEN start = excluded.start THEN hits + 1 ELSE 1 END, "
            "start = excluded.start RETURNING hits", (name, start)).fetchone()[0])
        return hits, float(start + window_s)

    def holding(self, key_id: str, now: float | None = None) -> int:
        """Tokens the live holds of ``key_id`` hold."""
        return self._read("SELECT COALESCE(SUM(tokens), 0) FROM spend_hold "
                          "WHERE key_id = ? AND expires > ?",
                          (key_id, time.time() if now is None else now))[0]

    def _read(self, sql: str, args: tuple) -> tuple:
        conn, lock = self._conn()

        def read() -> tuple:
            with lock:
                return conn.execute(sql, args).fetchone()

        return self._retry(read)

    def total(self, key_id: str) -> int:
        row = self._read("SELECT tokens FROM spend_total WHERE key_id = ?", (key_id,))
        return row[0] if row else 0

    def _window(self, key_id: str, seconds: float, now: float) -> tuple[int, float | None]:
        self.span(seconds, now)  # a ValueError for a window outside (0, retention_s]
        conn, lock = self._conn()

        def read() -> tuple[int, float | None]:
            with lock:
                return self._spent(conn, key_id, seconds, now)

        return self._retry(read)

    def close(self) -> None:
        state, self._state = self._state, None
        if state is not None and state[0] == os.getpid():
            with state[2]:
                state[1].close()


# Redis: a reservation is one script, so the check and the hold are one atomic step
# across gateway hosts. KEYS: holds (hash id -> tokens), their expiries (zset id -> time),
# then the balance's key or the window's buckets. ARGV: id, cap, want, least, expires,
# now, 1 if a window. The one rule (`decide`) is written again here, three lines.
_RESERVE = """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[6])
for _, id in ipairs(lapsed) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[6])
local held = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do held = held + tonumber(v) end
local spent, oldest = 0, 0
for i = 3, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    spent = spent + tonumber(v)
    if oldest == 0 then oldest = i - 2 end
  end
end
local left = tonumber(ARGV[2]) - spent - held
local want, least = tonumber(ARGV[3]), tonumber(ARGV[4])
if left <= 0 or left < least then return {0, 0, spent, held, oldest} end
local tokens = math.min(want, left)
if tokens > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], tokens)
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
end
return {1, tokens, spent, held, oldest}
"""
# Hold `tokens` for an id still held (never bring a settled hold back).
_ADJUST = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
"""


class RedisStore(_Buckets):
    """Shared by several gateway hosts. Keys: ``<prefix>{key_id}:total`` (INCRBY) and one
    ``<prefix>{key_id}:<width>:<start>`` per bucket, expiring when no window can reach it;
    holds in ``<prefix>{key_id}:holds`` (a hash) with their expiries in ``:holdexp`` (a
    sorted set), both gone once no hold is renewed. The braces keep a key's data in one
    Redis Cluster slot so a window is a single MGET and a reservation a single script."""

    def __init__(self, url: str, *, retention_s: int = DEFAULT_RETENTION_S,
                 prefix: str = "cortex:spend:", timeout_s: float = 5.0) -> None:
        super().__init__(retention_s)
        import redis  # the gateway extra; only hosts configured for Redis need it

        # redis-py's pool reconnects after a fork, and its sockets are gevent-patched.
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s)
        self._prefix = prefix
        self._reserve_script = self._redis.register_script(_RESERVE)
        self._adjust_script = self._redis.register_script(_ADJUST)

    def _key(self, key_id: str, part: str) -> str:
        return f"{self._prefix}{{{key_id}}}:{part}"

    def _add(self, pipe: Any, key_id: str, tokens: int, now: float) -> None:
        pipe.incrby(self._key(key_id, "total"), tokens)
        for width, start, keep in self.buckets(now):
            bucket = self._key(key_id, f"{width}:{start}")
            pipe.incrby(bucket, tokens)
            # Relative to `now`, not the server's clock: gone once no window reaches it.
            pipe.expire(bucket, max(1, math.ceil(start + width + keep - now)))

    def _record(self, key_id: str, tokens: int, now: float) -> None:
        pipe = self._redis.pipeline(transaction=True)  # MULTI/EXEC: all of it or none
        self._add(pipe, key_id, tokens, now)
        pipe.execute()

    def total(self, key_id: str) -> int:
        return int(self._redis.get(self._key(key_id, "total")) or 0)

    def _window(self, key_id: str, seconds: float, now: float) -> tuple[int, float | None]:
        width, lo, hi = self.span(seconds, now)
        starts = range(lo, hi + 1, width)
        values = self._redis.mget([self._key(key_id, f"{width}:{s}") for s in starts])
        spent = [(s, int(v)) for s, v in zip(starts, values, strict=True) if v is not None]
        return sum(v for _, v in spent), float(spent[0][0] + width) if spent else None

    def _holds(self, key_id: str) -> tuple[str, str]:
        return self._key(key_id, "holds"), self._key(key_id, "holdexp")

    def _reserve(self, key_id: str, hold_id: str, cap: int, window_s: float, want: int,
                 least: int, ttl_s: float, now: float) -> Grant:
        holds, expiry = self._holds(key_id)
        if window_s:
            width, lo, hi = self.span(window_s, now)
            starts = list(range(lo, hi + 1, width))
            spend = [self._key(key_id, f"{width}:{s}") for s in starts]
        else:
            width, starts, spend = 0, [], [self._key(key_id, "total")]
        ok, tokens, spent, held, first = self._reserve_script(
            keys=[holds, expiry, *spend],
            args=[hold_id, cap, want, least, repr(now + ttl_s), repr(now)])
        if tokens:
            self._expire_holds(key_id, ttl_s)
        oldest = float(starts[first - 1] + width) if window_s and first else None
        return Grant(bool(ok), int(tokens), int(spent), int(held), oldest)

    def _expire_holds(self, key_id: str, ttl_s: float) -> None:
        # Both keys go once no hold has been renewed for a TTL: a dead host leaves nothing.
        pipe = self._redis.pipeline(transaction=False)
        for key in self._holds(key_id):
            pipe.expire(key, max(1, math.ceil(ttl_s)) + 1)
        pipe.execute()

    def adjust(self, key_id: str, hold_id: str, tokens: int) -> None:
        self._adjust_script(keys=[self._holds(key_id)[0]], args=[hold_id, max(0, tokens)])

    def renew(self, key_id: str, hold_ids: Iterable[str], ttl_s: float,
              now: float | None = None) -> None:
        expires = (time.time() if now is None else now) + ttl_s
        ids = list(hold_ids)
        if ids:
            # XX: only ids still there (a hold settled meanwhile stays gone).
            self._redis.zadd(self._holds(key_id)[1], dict.fromkeys(ids, expires), xx=True)
            self._expire_holds(key_id, ttl_s)

    def _settle(self, key_id: str, hold_id: str, tokens: int, now: float) -> None:
        holds, expiry = self._holds(key_id)
        pipe = self._redis.pipeline(transaction=True)
        if tokens:
            self._add(pipe, key_id, tokens, now)
        pipe.hdel(holds, hold_id)
        pipe.zrem(expiry, hold_id)
        pipe.execute()

    def hit(self, name: str, window_s: int, now: float | None = None) -> tuple[int, float]:
        start = math.floor((time.time() if now is None else now) / window_s) * window_s
        key = f"{self._prefix}rate:{{{name}}}:{start}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, window_s + 1)
        hits, _ = pipe.execute()
        return int(hits), float(start + window_s)

    def holding(self, key_id: str, now: float | None = None) -> int:
        holds, expiry = self._holds(key_id)
        live = self._redis.zrangebyscore(expiry, f"({time.time() if now is None else now!r}",
                                         "+inf")
        return sum(int(v) for v in self._redis.hmget(holds, live) if v) if live else 0

    def close(self) -> None:
        self._redis.close()


_FORMS = ('"" or "sqlite" (a file in the gateway\'s state_dir), "sqlite:///absolute/path", '
          'or "redis://host:port/db" (also rediss://)')


def _shown(spec: str) -> str:
    """The spec for an error message, without a password (redis://:pw@host)."""
    return repr(re.sub(r"//[^/@]*@", "//<credentials>@", spec))


def parse_spec(spec: str) -> tuple[str, str]:
    """``[entitlements] store`` → ("sqlite", path or "") or ("redis", url); a ValueError
    naming the accepted forms otherwise (checked when the config loads)."""
    spec = spec.strip()
    if spec in ("", "sqlite"):
        return "sqlite", ""
    if spec.startswith("sqlite://"):
        path = spec.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ValueError(f"[entitlements] store = {_shown(spec)}: the sqlite path must be "
                             f"absolute (sqlite:///var/lib/...); accepted forms: {_FORMS}")
        return "sqlite", path
    if spec.startswith(("redis://", "rediss://")):
        return "redis", spec
    raise ValueError(f"[entitlements] store = {_shown(spec)} is not understood; "
                     f"accepted forms: {_FORMS}")


def open_store(spec: str, state_dir: Path, **options: int) -> SpendStore:
    """The store named by ``[entitlements] store``; ``options`` (``retention_s``: pass the
    longest rolling window configured, if over a day) go to its constructor."""
    kind, where = parse_spec(spec)
    if kind == "redis":
        return RedisStore(where, **options)
    return SQLiteStore(Path(where) if where else Path(state_dir) / "entitlements.sqlite3",
                       **options)
