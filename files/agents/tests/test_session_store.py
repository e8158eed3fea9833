"""The session cache's store: keys, budgets, eviction order, pins, the disk tier and its
faults. Payloads here are plain bytes; the engine's side is in test_neuron_session_cache."""

from __future__ import annotations

import logging
import os
import stat
import time

import pytest

from cortex.neuron.config import CacheConfig
from cortex.neuron.session_cache import BLOCK_TOKENS, MB, SessionCache, auto_ram_mb

BLOCK = 256 * 1024  # bytes of one payload: 4 to the MB


def store(tmp_path, *, ram_mb=1, disk_mb=0, ttl=86400, enabled=True) -> SessionCache:
    return SessionCache(CacheConfig(enabled=enabled, ram_mb=ram_mb, disk_mb=disk_mb,
                                    disk_ttl_secs=ttl), tmp_path)


def tokens(n_blocks: int, seed: int = 0) -> list[int]:
    return [seed * 100000 + i for i in range(n_blocks * BLOCK_TOKENS)]


def payload(tag: int) -> bytes:
    return bytes([tag % 256]) * BLOCK


def save(cache: SessionCache, partition: str, toks: list[int], tag: int = 0,
         keep_until: float = 0.0) -> list[bytes]:
    view = cache.view("m", {"file": "m.gguf"})
    keys = view.keys(partition, toks)
    cache.put(keys, {i: payload(tag + i) for i in cache.missing(keys)}, keep_until)
    return keys


def test_keys_chain_over_whole_blocks_per_partition_and_model(tmp_path):
    cache = store(tmp_path)
    view = cache.view("m", {"file": "m.gguf", "n_ctx": 512})
    t = tokens(3)
    keys = view.keys("alice", [*t, 1, 2, 3])  # a partial block has no key
    assert len(keys) == 3 and len(set(keys)) == 3
    assert view.keys("alice", t[:128]) == keys[:2]  # a prefix shares its chain
    assert view.keys("bob", t)[0] != keys[0]  # another account: other keys
    other = cache.view("m", {"file": "m.gguf", "n_ctx": 1024})  # other load parameters
    assert other.keys("alice", t)[0] != keys[0]
    changed = list(t)
    changed[70] += 1  # a change in block 1 changes its key and every key after it
    k2 = view.keys("alice", changed)
    assert k2[0] == keys[0] and k2[1] != keys[1] and k2[2] != keys[2]


def test_lru_within_the_ram_budget_leaves_first(tmp_path):
    cache = store(tmp_path, ram_mb=1)  # 4 blocks
    a = save(cache, "p", tokens(3, seed=1))
    b = save(cache, "p", tokens(2, seed=2))  # 5 blocks: a's leaf goes, not its root
    assert cache.ram_used <= MB and cache.available(a) == 2 and cache.available(b) == 2
    cache.get(a[:2])  # a used again: b is now the least recent
    save(cache, "p", tokens(1, seed=3))
    assert cache.available(a) == 2 and cache.available(b) == 1
    assert cache.snapshot()["evictions"]["ram"] == 2


def test_a_conversation_stores_each_block_once(tmp_path):
    cache = store(tmp_path, ram_mb=64)
    t = tokens(4)
    save(cache, "p", t[:2 * BLOCK_TOKENS])
    save(cache, "p", t[:3 * BLOCK_TOKENS])  # the next turn: one new block, not three
    save(cache, "p", t)
    assert cache.snapshot()["saved_blocks"] == 4 and cache.ram_used == 4 * BLOCK


def test_a_pinned_chain_outlives_newer_unpinned_blocks(tmp_path):
    cache = store(tmp_path, ram_mb=1)
    pinned = save(cache, "p", tokens(2, seed=1), keep_until=time.time() + 300)
    for seed in range(2, 6):
        save(cache, "p", tokens(1, seed=seed))
    assert cache.available(pinned) == 2
    # Past its ttl, it is one more block in the LRU order.
    cache._ram[pinned[0]].keep_until = cache._ram[pinned[1]].keep_until = 0
    for seed in range(6, 10):
        save(cache, "p", tokens(1, seed=seed))
    assert cache.available(pinned) == 0


def test_pins_give_way_when_nothing_else_is_left(tmp_path):
    cache = store(tmp_path, ram_mb=1)
    save(cache, "p", tokens(6), keep_until=time.time() + 3600)
    assert cache.ram_used <= MB


def test_shrink_gives_memory_back_for_a_model(tmp_path):
    cache = store(tmp_path, ram_mb=4)
    save(cache, "p", tokens(12))
    assert cache.ram_used_mb == 3
    assert cache.shrink(2) == 2 and cache.ram_used_mb == 1
    assert cache.ram_budget == 4 * MB  # the budget stays; only what it held went


def test_off_stores_nothing(tmp_path):
    cache = store(tmp_path, enabled=False, disk_mb=8)
    save(cache, "p", tokens(2))
    assert cache.ram_used == 0 and not (tmp_path / "kv").exists()


def test_the_default_budget_follows_the_host(tmp_path):
    assert auto_ram_mb(16384) == 2048 and auto_ram_mb(1 << 20) == 8192
    assert store(tmp_path, ram_mb=0).ram_budget > 0


# -- the disk tier -----------------------------------------------------------------------
def files(tmp_path) -> list:
    return sorted((tmp_path / "kv").glob("*/*.kv"))


def test_evicted_blocks_spill_to_disk_and_come_back(tmp_path):
    cache = store(tmp_path, ram_mb=1, disk_mb=8)
    a = save(cache, "p", tokens(4, seed=1), tag=10)
    save(cache, "p", tokens(4, seed=2), tag=20)  # a's blocks leave RAM for disk
    assert len(files(tmp_path)) == 4 and cache.snapshot()["disk"]["blocks"] == 4
    assert cache.available(a) == 4
    got = cache.get(a)
    assert got == [payload(10 + i) for i in range(4)]
    assert cache.snapshot()["disk_reads"] == 4
    for f in files(tmp_path):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "kv").stat().st_mode) == 0o700


def test_the_disk_tier_survives_a_restart_and_keeps_its_budget(tmp_path):
    cache = store(tmp_path, ram_mb=1, disk_mb=2)  # 4 blocks in RAM, 7 files on disk
    chains = [save(cache, "p", tokens(4, seed=s), tag=s * 10) for s in range(4)]
    assert cache.snapshot()["disk"]["used_mb"] <= 2
    again = store(tmp_path, ram_mb=1, disk_mb=2)  # a new process, the same files
    assert again.get(chains[2]) == [payload(20 + i) for i in range(4)]
    assert again.available(chains[1]) == 3  # its leaf went first, for the budget
    assert again.available(chains[0]) == 0


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_a_damaged_disk_block_is_a_logged_miss(tmp_path, caplog, damage):
    cache = store(tmp_path, ram_mb=1, disk_mb=8)
    a = save(cache, "p", tokens(4, seed=1), tag=10)
    save(cache, "p", tokens(4, seed=2), tag=20)
    victim = cache._path(cache._disk, a[2])
    data = victim.read_bytes()
    victim.write_bytes({"truncate": data[:len(data) // 2], "empty": b"",
                        "flip": data[:-1] + bytes([data[-1] ^ 1])}[damage])
    with caplog.at_level(logging.WARNING, "cortex.neuron.session_cache"):
        got = cache.get(a)
    assert got == [payload(10), payload(11)]  # the chain up to the damaged block
    assert not victim.exists() and cache.snapshot()["corrupt"] == 1
    assert "a miss, the file is removed" in caplog.text


def test_expired_disk_blocks_are_misses_and_go_at_start(tmp_path):
    cache = store(tmp_path, ram_mb=1, disk_mb=8, ttl=60)
    a = save(cache, "p", tokens(4, seed=1))
    save(cache, "p", tokens(4, seed=2))
    old = time.time() - 120
    for f in files(tmp_path):
        os.utime(f, (old, old))
    assert cache.get(a) == []
    save(cache, "p", tokens(4, seed=3))
    for f in files(tmp_path):
        os.utime(f, (old, old))
    store(tmp_path, ram_mb=1, disk_mb=8, ttl=60)
    assert files(tmp_path) == []
