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
_MAX_DIMS = 4  # GGML_MAX_DIMS
# ggml tensor types: (elements a block, bytes a block), as ggml defines them, to find where
# a file's tensors end (tests/test_gguf_header.py checks them against the gguf package's).
GGML_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54),
    35: (256, 66), 39: (32, 17),
}
TRUNCATED = "truncated (an interrupted download or copy?): fetch the file again"


class GGUFError(ValueError):
    pass


def read_metadata(path: str | Path, *, check_tensors: bool = False) -> dict[str, Any]:
    """The file's key-value metadata. `check_tensors`: read the tensor index too and make
    sure the file holds all of its tensors' data (a truncated file is refused here, with
    its sizes, rather than by the engine with no reason given)."""
    size = Path(path).stat().st_size
    with open(path, "rb") as fh:
        if fh.read(4) != MAGIC:
            raise GGUFError("not a GGUF file (bad magic)")
        (version,) = _unpack(fh, "<I")
        if version < 2:
            raise GGUFError(f"GGUF version {version} is too old (need 2 or later)")
        n_tensors, n_kv = _unpack(fh, "<QQ")
        if n_kv > size // 13 or n_tensors > size // 24:  # the smallest entry of each
            raise GGUFError(f"the header lists {n_kv} metadata entries and {n_tensors} "
                            f"tensors, more than the file's {size} bytes hold: {TRUNCATED}")
        meta: dict[str, Any] = {"gguf.version": version, "gguf.tensor_count": n_tensors}
        for _ in range(n_kv):
            key = _read_string(fh)
            (vtype,) = _unpack(fh, "<I")
            meta[key] = _read_value(fh, vtype, size)
        if check_tensors:
            _check_tensors(fh, meta, n_tensors, size)
        return meta


def _take(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) < n:
        raise GGUFError(f"the file ends at byte {fh.tell()}, inside its header: {TRUNCATED}")
    return data


def _unpack(fh: BinaryIO, fmt: str) -> tuple:
    return struct.unpack(fmt, _take(fh, struct.calcsize(fmt)))


def _read_string(fh: BinaryIO) -> str:
    (n,) = _unpack(fh, "<Q")
    if n > 1 << 26:
        raise GGUFError("corrupt header: string length out of range")
    return _take(fh, n).decode("utf-8", errors="replace")


def _read_value(fh: BinaryIO, vtype: int, size: int) -> Any:
    if vtype in _SCALARS:
        return _unpack(fh, _SCALARS[vtype])[0]
    if vtype == _STRING:
        return _read_string(fh)
    if vtype == _ARRAY:
        (item_type,) = _unpack(fh, "<I")
        (n,) = _unpack(fh, "<Q")
        if item_type in _SCALARS:
            width = struct.calcsize(_SCALARS[item_type])
            if fh.tell() + n * width > size:
                raise GGUFError(f"an array of {n} values runs past the end of the file at "
                                f"byte {size}: {TRUNCATED}")
            if n > _MAX_ARRAY_KEEP:
                fh.seek(n * width, 1)
                return ArrayInfo(n)
        elif n > (size - fh.tell()) // 8:  # each item takes 8 bytes or more
            raise GGUFError(f"an array of {n} items runs past the end of the file at byte "
                            f"{size}: {TRUNCATED}")
        items = [_read_value(fh, item_type, size) for _ in range(n)]
        return items if n <= _MAX_ARRAY_KEEP else ArrayInfo(n)
    raise GGUFError(f"corrupt header: unknown value type {vtype}")


def _check_tensors(fh: BinaryIO, meta: dict[str, Any], n_tensors: int, size: int) -> None:
    """The file is at least as long as its tensor index says its data is."""
    tensors = []
    for _ in range(n_tensors):
        name = _read_string(fh)
        (n_dims,) = _unpack(fh, "<I")
        if n_dims > _MAX_DIMS:
            raise GGUFError(f"corrupt tensor index: {name!r} has {n_dims} dimensions")
        dims = _unpack(fh, f"<{n_dims}Q")
        ggml_type, offset = _unpack(fh, "<IQ")
        tensors.append((name, dims, ggml_type, offset))
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or isinstance(align, bool) or align <= 0:
        raise GGUFError(f"general.alignment is {align!r}, not a positive integer")
    start = -(-fh.tell() // align) * align
    end = start
    for name, dims, ggml_type, offset in tensors:
        count = 1
        for d in dims:
            count *= d
        block, nbytes = GGML_BLOCKS.get(ggml_type, (1, 0))  # unknown: its offset at least
        end = max(end, start + offset + count // block * nbytes)
        if end > size:
            raise GGUFError(f"the file is {size} bytes and tensor {name!r} ends at byte "
                            f"{end}: {TRUNCATED}")


class ArrayInfo:
    """Stands for a long array whose items we skipped."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<array of {self.length}>"


def describe(meta: dict[str, Any]) -> dict[str, Any]:
    """The few facts placement needs: arch, context, layers and KV width. Raises GGUFError
    when the metadata gives one of them as something other than a count."""
    arch = meta.get("general.architecture", "unknown")

    def get(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list) and value and key == "attention.head_count_kv":
            value = max(value)  # per-layer counts in some archs
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise GGUFError(f"{arch}.{key} is {value!r:.40}, not a count")
        return value

    n_embd = get("embedding_length", 0)
    n_head = get("attention.head_count", 1) or 1
    n_head_kv = get("attention.head_count_kv", n_head)
    head_dim = get("attention.key_length", n_embd // n_head)
    template = meta.get("tokenizer.chat_template")
    return {
        "architecture": arch,
        "name": meta.get("general.name"),
        "context_length": get("context_length", 0),
        "n_layer": get("block_count", 0),
        "n_embd": n_embd,
        "kv_width": n_head_kv * head_dim,
        "chat_template": template if isinstance(template, str) else None,
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
