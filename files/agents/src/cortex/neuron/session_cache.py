"""The session cache: KV blocks of earlier prompts in host RAM and on disk, per account.

A model's slots hold the prompts they last ran; when a slot is given to another sequence,
its engine saves the slot's KV state here as token blocks, and a later prompt that starts
with the same blocks gets them back instead of prefilling them again (issue 20).

- Blocks are `BLOCK_TOKENS` tokens, named by a hash chain: a block's key hashes its
  parent's key and its tokens, and the chain's root hashes the model's identity (file,
  load parameters, KV layout) and the partition (the account). So a block is found only by
  the same account sending the same tokens to the same model as loaded then, and one
  conversation's turns, or conversations sharing a system prompt, share their earlier
  blocks instead of each storing a full copy.
- Host RAM holds blocks up to `ram_mb`, least recently used first out. A restore touches a
  chain leaf first and root last, so a block is always older than its ancestors and
  eviction takes leaves first (a block without its ancestors could never be used).
  Anthropic's `cache_control` ttl pins a chain for that long while other blocks can go.
- Blocks evicted from RAM spill to disk (`disk_dir`, `disk_mb`, `disk_ttl_secs`): one
  file each, 0600, written whole then renamed, with a checksum; a file that is short or
  does not match its checksum is a miss (logged and removed), never a wrong state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortex.core.validate import get_number
from cortex.neuron.config import CacheConfig

log = logging.getLogger(__name__)

BLOCK_TOKENS = 64  # a turn re-prefills at most this many of its earlier tokens
_MAGIC = b"HXKV"
_HEAD = struct.Struct("<4sIQ16s")  # magic, format version, payload bytes, blake2b-128
_VERSION = 1
MB = 2**20


MAX_TTL_SECS = 86400


def requested_ttl(body: dict) -> float:
    """`helexa_cache_ttl` (seconds; the gateway's Anthropic translation sets it from
    cache_control): keep this prompt's blocks at least that long where the budget allows."""
    return float(get_number(body, "helexa_cache_ttl", 0, lo=0, hi=MAX_TTL_SECS))


def host_memory_mb() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def auto_ram_mb(total_mb: int) -> int:
    """The default budget: an eighth of the host's memory, at most 8 GiB (llama-server's
    default --cache-ram)."""
    return min(8192, total_mb // 8)


@dataclass
class _Block:
    payload: bytes
    keep_until: float = 0.0  # pinned (cache_control ttl) until then


@dataclass
class Counters:
    lookups: int = 0
    hits: int = 0  # lookups that found at least one block beyond what the slot held
    restores: int = 0
    restored_tokens: int = 0
    restore_seconds: float = 0.0
    saves: int = 0
    saved_blocks: int = 0
    ram_evictions: int = 0
    disk_evictions: int = 0
    disk_reads: int = 0
    corrupt: int = 0


@dataclass
class _Disk:
    root: Path
    budget: int
    ttl: float
    files: OrderedDict[bytes, tuple[Path, int]] = field(default_factory=OrderedDict)
    used: int = 0


class SessionCache:
    """One per neuron: every loaded model's blocks, within one RAM and one disk budget."""

    def __init__(self, cfg: CacheConfig, state_dir: Path) -> None:
        self.enabled = cfg.enabled
        mb = cfg.ram_mb or auto_ram_mb(host_memory_mb())
        self.ram_budget = mb * MB if cfg.enabled else 0
        self.block_tokens = BLOCK_TOKENS
        self._ram: OrderedDict[bytes, _Block] = OrderedDict()
        self.ram_used = 0
        self._lock = threading.Lock()
        self.counters = Counters()
        self._disk: _Disk | None = None
        if cfg.enabled and cfg.disk_mb > 0:
            root = Path(cfg.disk_dir) if cfg.disk_dir else state_dir / "kv"
            try:
                root.mkdir(parents=True, exist_ok=True, mode=0o700)  # (files are 0600)
                self._disk = _Disk(root, cfg.disk_mb * MB, float(cfg.disk_ttl_secs))
                self._scan(self._disk)
            except OSError as exc:
                log.warning("session cache: disk tier off, %s is not usable: %s", root, exc)
                self._disk = None

    # -- views ---------------------------------------------------------------------------
    def view(self, model_id: str, identity: dict[str, Any]) -> CacheView:
        """The blocks of one model as loaded with `identity` (file, parameters, layout)."""
        text = json.dumps(identity, sort_keys=True, default=str)
        return CacheView(self, model_id, hashlib.blake2b(text.encode(), digest_size=16)
                         .digest())

    # -- RAM -----------------------------------------------------------------------------
    def _touch(self, keys: list[bytes], keep_until: float) -> None:
        """Most recent last: the chain's root ends up newest (under the lock)."""
        for key in reversed(keys):
            block = self._ram.get(key)
            if block is not None:
                self._ram.move_to_end(key)
                block.keep_until = max(block.keep_until, keep_until)
        if self._disk is not None:
            for key in reversed(keys):
                if key in self._disk.files:
                    self._disk.files.move_to_end(key)

    def _evict_ram(self) -> list[tuple[bytes, bytes | None]]:
        """Drop blocks until within budget; return those to spill to disk (under the lock),
        with None for a payload the disk holds already (its file's age is renewed).
        Unpinned blocks go first, least recently used first; pinned ones only when nothing
        else is left."""
        spill = []
        now = time.time()
        while self.ram_used > self.ram_budget and self._ram:
            victim = next((k for k, b in self._ram.items() if b.keep_until <= now),
                          next(iter(self._ram)))
            block = self._ram.pop(victim)
            self.ram_used -= len(block.payload)
            self.counters.ram_evictions += 1
            if self._disk is not None:
                spill.append((victim, None if victim in self._disk.files else block.payload))
        return spill

    def shrink(self, need_mb: int) -> int:
        """Give up to `need_mb` of RAM back (a model load needs it); MB freed."""
        with self._lock:
            before = self.ram_used
            budget, self.ram_budget = self.ram_budget, max(0, self.ram_used - need_mb * MB)
            spill = self._evict_ram()
            self.ram_budget = budget
            freed = before - self.ram_used
        self._spill(spill)
        return freed // MB

    @property
    def ram_used_mb(self) -> int:
        return self.ram_used // MB

    # -- disk ----------------------------------------------------------------------------
    @staticmethod
    def _path(disk: _Disk, key: bytes) -> Path:
        return disk.root / key[:1].hex() / f"{key.hex()}.kv"

    def _scan(self, disk: _Disk) -> None:
        """Index the files a previous run left: expired ones go, the rest by age."""
        found = []
        cutoff = time.time() - disk.ttl
        for path in disk.root.glob("*/*.kv"):
            try:
                st = path.stat()
                key = bytes.fromhex(path.stem)
            except (OSError, ValueError):
                continue
            if st.st_mtime < cutoff:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append((st.st_mtime, key, path, st.st_size))
        for _, key, path, size in sorted(found):
            disk.files[key] = (path, size)
            disk.used += size
        for tmp in disk.root.glob("*/*.tmp"):  # a write cut short by a crash
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._evict_disk()

    def _evict_disk(self) -> None:
        disk = self._disk
        if disk is None:
            return
        while disk.used > disk.budget and disk.files:
            _, (path, size) = disk.files.popitem(last=False)
            disk.used -= size
            self.counters.disk_evictions += 1
            with contextlib.suppress(OSError):
                path.unlink()

    def _spill(self, blocks: list[tuple[bytes, bytes | None]]) -> None:
        """Write evicted blocks to disk (outside the lock: a file write takes a while)."""
        disk = self._disk
        if disk is None:
            return
        for key, payload in blocks:
            path = self._path(disk, key)
            if payload is None:  # on disk already: used until now, so not to expire yet
                with contextlib.suppress(OSError):
                    os.utime(path)
                continue
            tmp = path.with_suffix(".tmp")
            head = _HEAD.pack(_MAGIC, _VERSION, len(payload),
                              hashlib.blake2b(payload, digest_size=16).digest())
            try:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(head)
                    fh.write(payload)
                tmp.replace(path)
            except OSError as exc:
                log.warning("session cache: could not write a block to disk: %s", exc)
                with contextlib.suppress(OSError):
                    tmp.unlink()
                continue
            with self._lock:
                size = _HEAD.size + len(payload)
                old = disk.files.pop(key, None)
                disk.used += size - (old[1] if old else 0)
                disk.files[key] = (path, size)  # newer than what spilled before it
                self._evict_disk()

    def _read(self, key: bytes) -> bytes | None:
        """A block from disk, or None: missing, expired, short or not matching its sum."""
        disk = self._disk
        if disk is None:
            return None
        with self._lock:
            entry = disk.files.get(key)
        if entry is None:
            return None
        path, _ = entry
        problem = ""
        payload = b""
        try:
            st = path.stat()
            if st.st_mtime < time.time() - disk.ttl:
                problem = "expired"
            else:
                with open(path, "rb") as fh:
                    data = fh.read()
                if len(data) < _HEAD.size:
                    problem = f"{len(data)} bytes, shorter than its header"
                else:
                    magic, version, size, digest = _HEAD.unpack_from(data)
                    payload = data[_HEAD.size:]
                    if magic != _MAGIC or version != _VERSION:
                        problem = "not a block file of this version"
                    elif len(payload) != size:
                        problem = f"{len(payload)} of {size} payload bytes (truncated)"
                    elif hashlib.blake2b(payload, digest_size=16).digest() != digest:
                        problem = "checksum mismatch"
                    else:
                        os.utime(path)
        except FileNotFoundError:  # evicted meanwhile by another model's thread
            problem = "expired"
        except OSError as exc:
            problem = f"unreadable ({exc.strerror})"
        if problem:
            if problem != "expired":
                log.warning("session cache: %s: %s; a miss, the file is removed", path.name,
                            problem)
            self._forget_file(disk, key, corrupt=problem != "expired")
            return None
        self.counters.disk_reads += 1
        return payload

    def _forget_file(self, disk: _Disk, key: bytes, *, corrupt: bool) -> None:
        with self._lock:
            entry = disk.files.pop(key, None)
            if entry is None:
                return
            disk.used -= entry[1]
            self.counters.corrupt += corrupt
        with contextlib.suppress(OSError):
            entry[0].unlink()

    # -- reading and writing (a model's scheduler thread) ----------------------------------
    def _has(self, key: bytes) -> bool:
        return key in self._ram or (self._disk is not None and key in self._disk.files)

    def available(self, keys: list[bytes]) -> int:
        """How many leading `keys` are held (RAM or disk)."""
        with self._lock:
            n = 0
            for key in keys:
                if not self._has(key):
                    break
                n += 1
            return n

    def missing(self, keys: list[bytes]) -> list[int]:
        with self._lock:
            return [i for i, key in enumerate(keys) if not self._has(key)]

    def get(self, keys: list[bytes], keep_until: float = 0.0) -> list[bytes]:
        """The payloads of the leading `keys` still held (a disk block comes back to RAM);
        stops at the first one missing or unreadable."""
        out: list[bytes] = []
        promoted: dict[bytes, bytes] = {}
        for key in keys:
            with self._lock:
                block = self._ram.get(key)
            if block is not None:
                out.append(block.payload)
                continue
            payload = self._read(key)
            if payload is None:
                break
            out.append(payload)
            promoted[key] = payload
        with self._lock:
            for key, payload in promoted.items():
                if key not in self._ram:
                    self._ram[key] = _Block(payload)
                    self.ram_used += len(payload)
            self._touch(keys[:len(out)], keep_until)
            spill = self._evict_ram()
        self._spill(spill)
        return out

    def put(self, keys: list[bytes], payloads: dict[int, bytes], keep_until: float = 0.0
            ) -> None:
        """Store the blocks `payloads` (by index into `keys`) and touch the whole chain."""
        if not self.ram_budget:
            return
        with self._lock:
            for i, payload in payloads.items():
                key = keys[i]
                if key not in self._ram:
                    self._ram[key] = _Block(payload)
                    self.ram_used += len(payload)
            self._touch(keys, keep_until)
            self.counters.saves += 1
            self.counters.saved_blocks += len(payloads)
            spill = self._evict_ram()
        self._spill(spill)

    def record(self, **add: float) -> None:
        """Add to the counters (a model's scheduler thread: lookups, restores)."""
        with self._lock:
            for name, value in add.items():
                setattr(self.counters, name, getattr(self.counters, name) + value)

    def snapshot(self) -> dict[str, Any]:
        """For /health."""
        with self._lock:
            c = self.counters
            disk = self._disk
            return {
                "enabled": self.enabled, "block_tokens": self.block_tokens,
                "ram": {"budget_mb": self.ram_budget // MB,
                        "used_mb": round(self.ram_used / MB, 1), "blocks": len(self._ram)},
                "disk": ({"budget_mb": disk.budget // MB, "used_mb": round(disk.used / MB, 1),
                          "blocks": len(disk.files), "ttl_secs": int(disk.ttl)}
                         if disk is not None else None),
                "lookups": c.lookups, "hits": c.hits, "misses": c.lookups - c.hits,
                "restores": c.restores, "restored_tokens": c.restored_tokens,
                "restore_ms_total": round(c.restore_seconds * 1000, 1),
                "saves": c.saves, "saved_blocks": c.saved_blocks,
                "evictions": {"ram": c.ram_evictions, "disk": c.disk_evictions},
                "disk_reads": c.disk_reads, "corrupt": c.corrupt,
            }


class CacheView:
    """One loaded model's side of the cache: keys for its prompts, its figures."""

    def __init__(self, cache: SessionCache, model_id: str, identity: bytes) -> None:
        self.cache = cache
        self.model_id = model_id
        self.identity = identity
        self.block_tokens = cache.block_tokens

    def keys(self, partition: str, tokens: list[int]) -> list[bytes]:
        """The chain of keys of the whole blocks of `tokens`."""
        h = hashlib.blake2b(self.identity + partition.encode(), digest_size=16).digest()
        out = []
        b = self.block_tokens
        for start in range(0, len(tokens) - b + 1, b):
            h = hashlib.blake2b(h + array("i", tokens[start:start + b]).tobytes(),
                                digest_size=16).digest()
            out.append(h)
        return out

    def record_lookup(self, hit: bool) -> None:
        self.cache.record(lookups=1, hits=int(hit))

    def record_restore(self, tokens: int, seconds: float) -> None:
        self.cache.record(restores=1, restored_tokens=tokens, restore_seconds=seconds)
