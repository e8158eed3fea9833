"""Per-key token spend, shared by every gunicorn worker and, with Redis, every gateway host.

Two numbers per key: the balance (all tokens ever spent) and the spend inside a rolling
window. Rolling spend lives in time buckets, so storage grows with time, not with requests.
Each record lands in one bucket per tier: 1 s buckets serve windows up to 15 minutes
(exact to the second), 60 s buckets up to a day, hour buckets up to 31 days and day buckets
beyond, so a window sums at most ~1500 buckets whatever its length. A window counts every
bucket that overlaps it, so it errs toward the cap, by less than one bucket. Tiers past
``retention_s`` (the longest window a caller may ask about; a day unless the configured
windows are longer) are not written, so the common case pays for two tiers only.
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
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")

# (bucket width, longest window it serves), finest first.
TIERS = ((1, 900), (60, 86400), (3600, 31 * 86400), (86400, 10 * 366 * 86400))
DEFAULT_RETENTION_S = 86400


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


class SQLiteStore(_Buckets):
    """One file on the gateway host: any number of worker processes, survives restarts."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS spend_total (
            key_id TEXT PRIMARY KEY, tokens INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS spend_bucket (
            key_id TEXT NOT NULL, width INTEGER NOT NULL, start INTEGER NOT NULL,
            tokens INTEGER NOT NULL, PRIMARY KEY (key_id, width, start)) WITHOUT ROWID;
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

    def _record(self, key_id: str, tokens: int, now: float) -> None:
        conn, lock = self._conn()

        def write() -> None:
            with lock, conn:  # `with conn` commits, or rolls back on an error
                # IMMEDIATE takes the write lock up front, so a concurrent writer is told
                # busy at once instead of failing to upgrade a read lock half way through.
                conn.execute("BEGIN IMMEDIATE")
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

        self._retry(write)

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
        width, lo, hi = self.span(seconds, now)
        total, oldest = self._read(
            "SELECT COALESCE(SUM(tokens), 0), MIN(start) FROM spend_bucket "
            "WHERE key_id = ? AND width = ? AND start BETWEEN ? AND ?",
            (key_id, width, lo, hi))
        return total, None if oldest is None else float(oldest + width)

    def close(self) -> None:
        state, self._state = self._state, None
        if state is not None and state[0] == os.getpid():
            with state[2]:
                state[1].close()


class RedisStore(_Buckets):
    """Shared by several gateway hosts. Keys: ``<prefix>{key_id}:total`` (INCRBY) and one
    ``<prefix>{key_id}:<width>:<start>`` per bucket, expiring when no window can reach it;
    the braces keep a key's data in one Redis Cluster slot so a window is a single MGET."""

    def __init__(self, url: str, *, retention_s: int = DEFAULT_RETENTION_S,
                 prefix: str = "cortex:spend:", timeout_s: float = 5.0) -> None:
        super().__init__(retention_s)
        import redis  # the gateway extra; only hosts configured for Redis need it

        # redis-py's pool reconnects after a fork, and its sockets are gevent-patched.
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s)
        self._prefix = prefix

    def _key(self, key_id: str, part: str) -> str:
        return f"{self._prefix}{{{key_id}}}:{part}"

    def _record(self, key_id: str, tokens: int, now: float) -> None:
        pipe = self._redis.pipeline(transaction=True)  # MULTI/EXEC: all of it or none
        pipe.incrby(self._key(key_id, "total"), tokens)
        for width, start, keep in self.buckets(now):
            bucket = self._key(key_id, f"{width}:{start}")
            pipe.incrby(bucket, tokens)
            # Relative to `now`, not the server's clock: gone once no window reaches it.
            pipe.expire(bucket, max(1, math.ceil(start + width + keep - now)))
        pipe.execute()

    def total(self, key_id: str) -> int:
        return int(self._redis.get(self._key(key_id, "total")) or 0)

    def _window(self, key_id: str, seconds: float, now: float) -> tuple[int, float | None]:
        width, lo, hi = self.span(seconds, now)
        starts = range(lo, hi + 1, width)
        values = self._redis.mget([self._key(key_id, f"{width}:{s}") for s in starts])
        spent = [(s, int(v)) for s, v in zip(starts, values, strict=True) if v is not None]
        return sum(v for _, v in spent), float(spent[0][0] + width) if spent else None

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
