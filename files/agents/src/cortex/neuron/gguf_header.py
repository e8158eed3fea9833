"""Read a GGUF file's metadata (not its tensors) without loading the model.

Preflight needs the architecture, context length and layer shapes to estimate memory
before anything is allocated, and `/models` can describe a model it has not loaded.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
# GGUF value types → struct format (strings and arrays are handled apart).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (token lists) are skipped: we only need their length.
_MAX_ARRAY_KEEP = 64


class GGUFError(ValueError):
    pass


def read_metadata(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        if fh.read(4) != MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (bad magic)")
        (version,) = struct.unpack("<I", fh.read(4))
        if version < 2:
            raise GGUFError(f"{path}: GGUF version {version} is too old (need 2 or later)")
        n_tensors, n_kv = struct.unpack("<QQ", fh.read(16))
        meta: dict[str, Any] = {"gguf.version": version, "gguf.tensor_count": n_tensors}
        for _ in range(n_kv):
            key = _read_string(fh)
            (vtype,) = struct.unpack("<I", fh.read(4))
            meta[key] = _read_value(fh, vtype)
        return meta


def _read_string(fh: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", fh.read(8))
    if n > 1 << 26:
        raise GGUFError("corrupt GGUF: string length out of range")
    return fh.read(n).decode("utf-8", errors="replace")


def _read_value(fh: BinaryIO, vtype: int) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _read_string(fh)
    if vtype == _ARRAY:
        (item_type,) = struct.unpack("<I", fh.read(4))
        (n,) = struct.unpack("<Q", fh.read(8))
        if item_type in _SCALARS and n > _MAX_ARRAY_KEEP:
            fh.seek(n * struct.calcsize(_SCALARS[item_type]), 1)
            return ArrayInfo(n)
        items = [_read_value(fh, item_type) for _ in range(n)]
        return items if n <= _MAX_ARRAY_KEEP else ArrayInfo(n)
    raise GGUFError(f"corrupt GGUF: unknown value type {vtype}")


class ArrayInfo:
    """Stands for a long array whose items we skipped."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<array of {self.length}>"


def describe(meta: dict[str, Any]) -> dict[str, Any]:
    """The few facts placement needs: arch, context, layers and KV width."""
    arch = meta.get("general.architecture", "unknown")

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    n_embd = get("embedding_length", 0)
    n_head = get("attention.head_count", 1) or 1
    n_head_kv = get("attention.head_count_kv", n_head)
    if isinstance(n_head_kv, list):  # per-layer counts in some archs
        n_head_kv = max(n_head_kv)
    head_dim = get("attention.key_length", n_embd // n_head if n_head else 0)
    return {
        "architecture": arch,
        "name": meta.get("general.name"),
        "context_length": get("context_length", 0),
        "n_layer": get("block_count", 0),
        "n_embd": n_embd,
        "kv_width": n_head_kv * head_dim,
        "chat_template": meta.get("tokenizer.chat_template"),
    }


def estimate_mb(path: Path, meta: dict[str, Any], n_ctx: int) -> int:
    """Weights (the file) + an f16 KV cache for `n_ctx` + compute buffers."""
    facts = describe(meta)
    kv_bytes = 2 * 2 * n_ctx * facts["n_layer"] * facts["kv_width"]
    overhead = 64 * 2**20
    size = sum(p.stat().st_size for p in split_parts(path))
    return (size + kv_bytes + overhead) // 2**20


def embeddings_mb(meta: dict[str, Any], n_ctx: int) -> int:
    """An embeddings context for inputs of `n_ctx` tokens: its f16 KV cache, an output row
    per token (llama.cpp keeps every token's logits beside its embedding, even when it
    pools) and compute buffers."""
    facts = describe(meta)
    n_vocab = len(meta.get("tokenizer.ggml.tokens") or ()) or meta.get(
        f"{facts['architecture']}.vocab_size", 0)
    kv_bytes = 2 * 2 * n_ctx * facts["n_layer"] * facts["kv_width"]
    outputs = 4 * n_ctx * (n_vocab + facts["n_embd"])
    return (kv_bytes + outputs + 64 * 2**20) // 2**20


def split_parts(path: Path) -> list[Path]:
    """All shards of a split GGUF (`name-00001-of-00003.gguf`), or just the file."""
    m = re.match(r"(.*)-(\d{5})-of-(\d{5})\.gguf$", path.name)
    if not m:
        return [path]
    total = int(m.group(3))
    return [path.with_name(f"{m.group(1)}-{i:05d}-of-{total:05d}.gguf")
            for i in range(1, total + 1)]
