"""The per-key spend store, SQLite and a real Redis server, alike."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cortex.gateway.store import RedisStore, SpendStore, SQLiteStore, key_id_for, open_store

T0 = 1_699_999_200.0  # a whole hour; tests pass time explicitly and never sleep


@pytest.fixture
def store(store_spec: str, tmp_path: Path) -> Iterator[SpendStore]:
    s = open_store(store_spec, tmp_path)
    yield s
    s.close()


def test_balance_accumulates(store: SpendStore) -> None:
    assert store.total("k_a") == 0
    store.record("k_a", 100, now=T0)
    store.record("k_a", 23, now=T0 + 5000)
    store.record("k_a", 0, now=T0 + 6000)
    store.record("k_b", 7, now=T0)
    assert store.total("k_a") == 123
    assert store.total("k_b") == 7
    with pytest.raises(ValueError, match="tokens"):
        store.record("k_a", -1, now=T0)


def test_rolling_window_excludes_old_spend(store: SpendStore) -> None:
    store.record("k_a", 10, now=T0 + 0.5)
    store.record("k_a", 5, now=T0 + 30.2)
    store.record("k_a", 1, now=T0 + 30.7)  # same 1 s bucket: one row, not two
    store.record("k_b", 1000, now=T0 + 30)
    assert store.window_total("k_a", 60, now=T0 + 59) == 16
    # The first bucket [T0, T0+1) leaves the 60 s window at T0 + 61.
    assert store.window_total("k_a", 60, now=T0 + 60.9) == 16
    assert store.window_total("k_a", 60, now=T0 + 61) == 6
    assert store.window_total("k_a", 60, now=T0 + 91) == 0
    assert store.window_total("k_a", 10, now=T0 + 31) == 6
    assert store.window_total("k_nobody", 60, now=T0 + 31) == 0
    # The balance still has all of it.
    assert store.total("k_a") == 16


def test_oldest_in_window_gives_retry_after(store: SpendStore) -> None:
    assert store.oldest_in_window("k_a", 60, now=T0) is None
    store.record("k_a", 10, now=T0 + 0.5)
    store.record("k_a", 5, now=T0 + 30.2)
    now = T0 + 40
    oldest = store.oldest_in_window("k_a", 60, now=now)
    assert oldest == T0 + 1  # the end of the bucket the spend fell in
    retry_after = oldest + 60 - now
    assert retry_after == 21
    # At that moment the old spend is out and the next one is the oldest.
    assert store.window_total("k_a", 60, now=now + retry_after) == 5
    assert store.oldest_in_window("k_a", 60, now=now + retry_after) == T0 + 31
    assert store.oldest_in_window("k_a", 60, now=T0 + 200) is None


def test_long_windows_use_minute_buckets(store: SpendStore) -> None:
    store.record("k_a", 10, now=T0 + 0.5)  # minute bucket [T0, T0+60)
    store.record("k_a", 5, now=T0 + 1000)  # minute bucket [T0+960, T0+1020)
    assert store.window_total("k_a", 3600, now=T0 + 3600) == 15
    # Over 15 minutes a window counts whole minutes: the first spend leaves at T0 + 3660.
    assert store.window_total("k_a", 3600, now=T0 + 3659) == 15
    assert store.oldest_in_window("k_a", 3600, now=T0 + 3600) == T0 + 60
    assert store.window_total("k_a", 3600, now=T0 + 3660) == 5
    assert store.oldest_in_window("k_a", 3600, now=T0 + 3660) == T0 + 1020
    # A day is the default retention; longer windows need retention_s.
    assert store.window_total("k_a", 86400, now=T0 + 86400) == 15
    with pytest.raises(ValueError, match="retention_s"):
        store.window_total("k_a", 86401, now=T0 + 86400)


def test_week_and_year_windows_use_hour_and_day_buckets(store_spec: str, tmp_path: Path
                                                        ) -> None:
    week, year = 7 * 86400, 366 * 86400
    s = open_store(store_spec, tmp_path, retention_s=year)
    s.record("k_a", 10, now=T0 + 0.5)  # hour bucket [T0, T0+3600)
    s.record("k_a", 5, now=T0 + 3 * 86400)
    assert s.window_total("k_a", week, now=T0 + week) == 15
    assert s.oldest_in_window("k_a", week, now=T0 + week) == T0 + 3600
    assert s.window_total("k_a", week, now=T0 + week + 3599) == 15
    assert s.window_total("k_a", week, now=T0 + week + 3600) == 5
    # Shorter windows still read their own, finer tiers.
    assert s.window_total("k_a", 60, now=T0 + 3 * 86400 + 1) == 5
    assert s.window_total("k_a", 86400, now=T0 + 3 * 86400 + 1) == 5
    # Past 31 days a window counts whole days.
    assert s.window_total("k_a", year, now=T0 + 200 * 86400) == 15
    assert s.window_total("k_a", 60 * 86400, now=T0 + 62 * 86400) == 5
    with pytest.raises(ValueError, match="retention_s"):
        s.window_total("k_a", year + 1, now=T0 + year)
    s.close()


def test_default_retention_writes_two_tiers_only(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "s.sqlite3")
    s.record("k_a", 1, now=T0)
    conn, _ = s._conn()
    assert sorted(w for (w,) in conn.execute("SELECT width FROM spend_bucket")) == [1, 60]
    s.close()


def test_sqlite_prunes_old_buckets(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite3", retention_s=3600)
    for i in range(0, 3 * 3600, 5):  # 3 hours, a record every 5 s
        store.record("k_a", 1, now=T0 + i)
    conn, _ = store._conn()
    rows = dict(conn.execute("SELECT width, COUNT(*) FROM spend_bucket GROUP BY width"))
    assert rows[1] <= 900 // 5 + 1 and rows[60] <= 3600 // 60 + 1
    assert store.total("k_a") == 3 * 3600 // 5
    now = T0 + 3 * 3600 - 3  # the last record was at -5
    # 61 minute buckets overlap an hour that does not start on a minute: one extra minute.
    assert store.window_total("k_a", 3600, now=now) == 3600 // 5 + 12
    assert store.window_total("k_a", 60, now=now) == 12
    store.close()


def test_redis_buckets_expire(redis_url: str) -> None:
    import redis

    store = RedisStore(redis_url, retention_s=3600, prefix="t-expire:")
    store.record("k_a", 3, now=time.time())
    with redis.Redis.from_url(redis_url) as client:
        ttls = {k.decode().split(":")[2]: client.ttl(k) for k in client.keys("t-expire:*")}
    assert ttls.pop("total") == -1  # the balance never expires
    assert 900 < ttls["1"] <= 901  # second buckets serve windows up to 15 minutes
    assert 3600 < ttls["60"] <= 3660
    store.close()


def _hammer(spec: str, state_dir: str, n: int, barrier: multiprocessing.synchronize.Barrier
            ) -> None:
    store = open_store(spec, Path(state_dir))
    barrier.wait(timeout=30)
    for i in range(n):
        store.record("k_shared", 1, now=T0 + i % 5)
    store.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_processes_never_lose_an_increment(store_spec: str, tmp_path: Path, method: str
                                           ) -> None:
    n, procs = 400, 4
    # The parent uses the store first, so forked children inherit an open connection.
    parent = open_store(store_spec, tmp_path)
    parent.record("k_shared", 1, now=T0)
    ctx = multiprocessing.get_context(method)
    barrier = ctx.Barrier(procs)
    workers = [ctx.Process(target=_hammer, args=(store_spec, str(tmp_path), n, barrier))
               for _ in range(procs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    assert parent.total("k_shared") == 1 + n * procs
    assert parent.window_total("k_shared", 60, now=T0 + 10) == 1 + n * procs
    parent.close()


def test_threads_share_one_store(store: SpendStore) -> None:
    def hammer() -> None:
        for _ in range(200):
            store.record("k_shared", 1, now=T0)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert store.total("k_shared") == 1600


_GEVENT_WORKER = """
from gevent import monkey; monkey.patch_all()
import sys, gevent
from pathlib import Path
from cortex.gateway.store import open_store
store = open_store(sys.argv[1], Path(sys.argv[2]))
def hammer():
    for _ in range(50):
        store.record("k_green", 1, now=1_700_000_000.0)
        gevent.sleep(0)  # yield between records, as a gevent worker does between requests
gevent.joinall([gevent.spawn(hammer) for _ in range(20)], raise_error=True)
print(store.total("k_green"))
"""


def test_gevent_greenlets_share_one_store(store_spec: str, tmp_path: Path) -> None:
    # A gunicorn gevent worker: monkey-patched, many greenlets, one store. A subprocess,
    # so the patching stays out of this test session.
    pytest.importorskip("gevent")
    out = subprocess.run([sys.executable, "-c", _GEVENT_WORKER, store_spec, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1000"]


def test_sqlite_store_survives_fork_after_use(tmp_path: Path) -> None:
    # A store object made and used in the parent, then used in forked children (gunicorn
    # --preload): each child opens its own connection.
    store = SQLiteStore(tmp_path / "s.sqlite3")
    store.record("k_a", 1, now=T0)
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=store.record, args=("k_a", 10, T0)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert store.total("k_a") == 31
    store.close()


def test_key_id_is_stable_and_hides_the_key() -> None:
    key = "sk-helexa-0123456789abcdef"
    assert key_id_for(key) == key_id_for(key)
    assert key_id_for(key) != key_id_for(key + "x")
    assert key_id_for(key).startswith("k_")
    assert key not in key_id_for(key) and "0123456789abcdef" not in key_id_for(key)
    # Stable across processes and versions: a fixed value.
    assert key_id_for("secret") == "k_2bb80d537b1d"


def test_open_store_sqlite_forms(tmp_path: Path) -> None:
    for spec in ("", "sqlite", " sqlite "):
        s = open_store(spec, tmp_path / "state")
        assert isinstance(s, SQLiteStore)
        assert s.path == tmp_path / "state" / "entitlements.sqlite3"
        s.record("k_a", 1)
        assert s.path.exists()
        s.close()
    s = open_store(f"sqlite://{tmp_path}/elsewhere.db", tmp_path / "state")
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "elsewhere.db"
    s.close()


def test_open_store_redis_form(tmp_path: Path, redis_url: str) -> None:
    s = open_store(redis_url, tmp_path)
    assert isinstance(s, RedisStore)
    s.record("k_a", 2)
    assert s.total("k_a") == 2
    s.close()


@pytest.mark.parametrize("spec", ["postgres://db/x", "sqlite://relative.db", "memory",
                                  "/var/lib/x.sqlite3"])
def test_open_store_rejects_unknown_forms(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[entitlements\] store") as err:
        open_store(spec, tmp_path)
    assert "sqlite:///" in str(err.value) and "redis://" in str(err.value)


_GEVENT_WAITER = """
from gevent import monkey; monkey.patch_all()
import sys, gevent
from cortex.gateway.store import SQLiteStore
store = SQLiteStore(sys.argv[1])
store.record("k_a", 1)  # connected before the other process takes the lock
print("ready", flush=True)
sys.stdin.readline()  # the other process now holds the write lock
writer = gevent.spawn(store.record, "k_a", 5)
ticks = 0
while not writer.ready():
    ticks += 1
    if ticks == 20:
        print("ticking", flush=True)  # the hub runs while the write waits
    gevent.sleep(0.005)
writer.get()
print("total", store.total("k_a"), flush=True)
"""


def test_a_locked_sqlite_file_never_stalls_the_gevent_hub(tmp_path: Path) -> None:
    # Two processes: this one holds the write lock; the gevent one must keep serving its
    # other greenlets while its write waits, then land the write once the lock is free.
    import sqlite3

    path = tmp_path / "s.sqlite3"
    SQLiteStore(path).close()
    proc = subprocess.Popen([sys.executable, "-c", _GEVENT_WAITER, str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().split() == ["ready"], proc.stderr.read()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        # Before the fix the hub sat inside sqlite's busy wait: no tick, then "locked".
        line = proc.stdout.readline()
        holder.execute("COMMIT")
        holder.close()
        assert line.split() == ["ticking"], proc.stderr.read()
        assert proc.stdout.readline().split() == ["total", "6"], proc.stderr.read()
        assert proc.wait(30) == 0
    finally:
        proc.kill()
