"""A sequence's KV state cut into token blocks, and blocks put back together.

llama.cpp saves one sequence's KV cells as one blob (`llama_state_seq_get_data`) and
restores a whole blob into a sequence (`llama_state_seq_set_data`, which clears it first).
The session cache stores token blocks instead, so that turns of one conversation, and
conversations sharing a system prompt, share their earlier blocks rather than each holding
a full copy. That needs the blob's layout, which llama.cpp does not document; this module is
the one place that knows it, and it checks every blob against it to the byte: anything
else (a model with SWA or recurrent layers, extra per-cell data, a llama.cpp whose format
moved on) is refused here, and the cache stays off for that model.

The layout (llama.cpp's llama_kv_cache::state_write, split KV cache, one sequence):
  u32 magic, i32 seq_id, u32 n_stream, then per stream: u32 cell_count and, where it is
  not 0, cell_count x (i32 pos, u32 n_seq_id = 1, i32 seq_id), u32 v_trans, u32 n_layer,
  per layer (i32 k_type, u64 k_row_bytes, cells x k_row_bytes), then per layer either
  (i32 v_type, u64 v_row_bytes, cells x v_row_bytes) or, with v_trans,
  (i32 v_type, u32 v_el_bytes, u32 n_embd_v, n_embd_v x cells x v_el_bytes).
A block's payload: for each layer its cells' K rows, then for each layer their V part.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

_CELL = np.dtype([("pos", "<i4"), ("n_seq", "<u4"), ("seq", "<i4")])


class LayoutError(ValueError):
    """The blob is not one this module can cut (see the module's docstring)."""


@dataclass(frozen=True)
class Layout:
    """What every blob of one loaded model shares; `token_bytes` of KV per token."""

    magic: int
    n_stream: int
    v_trans: bool
    k: tuple[tuple[int, int], ...]  # per layer: (type, row bytes)
    v: tuple[tuple[int, int, int], ...]  # per layer: (type, row or element bytes, n_embd_v)

    @property
    def token_bytes(self) -> int:
        return sum(r for _, r in self.k) + sum(r * n for _, r, n in self.v)

    def signature(self) -> str:
        """Names the layout in a cache's identity: blocks are valid only under it."""
        k = ",".join(f"{t}:{r}" for t, r in self.k)
        v = ",".join(f"{t}:{r}x{n}" for t, r, n in self.v)
        return f"kv1;trans={int(self.v_trans)};k={k};v={v}"


@dataclass
class State:
    """One parsed blob: `cells` tokens at positions 0..cells-1, views into the blob."""

    layout: Layout
    cells: int
    k: list[np.ndarray]  # per layer (cells, row bytes)
    v: list[np.ndarray]  # per layer (cells, row bytes), or (n_embd_v, cells, el) with v_trans

    def block(self, start: int, end: int) -> bytes:
        """The payload of tokens [start, end)."""
        parts = [k[start:end] for k in self.k]
        if self.layout.v_trans:
            parts += [v[:, start:end] for v in self.v]
        else:
            parts += [v[start:end] for v in self.v]
        return b"".join(p.tobytes() for p in parts)


class _Reader:
    def __init__(self, blob: bytes) -> None:
        self.blob, self.at = blob, 0

    def take(self, fmt: str) -> int:
        try:
            (value,) = struct.unpack_from(fmt, self.blob, self.at)
        except struct.error:
            raise LayoutError(f"the blob ends at byte {self.at}") from None
        self.at += struct.calcsize(fmt)
        return value

    def array(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        if self.at + n > len(self.blob):
            raise LayoutError(f"the blob ends before {n} bytes at {self.at}")
        out = np.frombuffer(self.blob, np.uint8, n, self.at).reshape(shape)
        self.at += n
        return out


def parse(blob: bytes, seq: int) -> State:
    """Read `seq`'s blob; LayoutError unless it is exactly the layout above."""
    r = _Reader(blob)
    magic = r.take("<I")
    if r.take("<i") != seq:
        raise LayoutError("the blob names another sequence")
    n_stream = r.take("<I")
    found: State | None = None
    for _ in range(n_stream):
        cells = r.take("<I")
        if not cells:
            continue
        if found is not None:
            raise LayoutError("cells in more than one stream")
        meta = np.frombuffer(r.array((cells * _CELL.itemsize,)), _CELL)
        if (not np.array_equal(meta["pos"], np.arange(cells)) or (meta["n_seq"] != 1).any()
                or (meta["seq"] != seq).any()):
            raise LayoutError("cells out of order, or shared, or with extra data")
        v_trans = r.take("<I")
        n_layer = r.take("<I")
        if v_trans not in (0, 1) or not 0 < n_layer < 4096:
            raise LayoutError(f"v_trans {v_trans}, n_layer {n_layer}")
        k_meta, k = [], []
        for _ in range(n_layer):
            k_meta.append((r.take("<i"), r.take("<Q")))
            k.append(r.array((cells, k_meta[-1][1])))
        v_meta, v = [], []
        for _ in range(n_layer):
            if v_trans:
                kind, el, n_embd = r.take("<i"), r.take("<I"), r.take("<I")
                v_meta.append((kind, el, n_embd))
                v.append(r.array((n_embd, cells, el)))
            else:
                kind, row = r.take("<i"), r.take("<Q")
                v_meta.append((kind, row, 1))
                v.append(r.array((cells, row)))
        layout = Layout(magic, n_stream, bool(v_trans), tuple(k_meta), tuple(v_meta))
        found = State(layout, cells, k, v)
    if found is None:
        raise LayoutError("no cells")
    if r.at != len(blob):
        raise LayoutError(f"{len(blob) - r.at} bytes past the layout (a SWA or recurrent "
                          "cache, or a newer format)")
    return found


def assemble(layout: Layout, payloads: list[bytes], block_tokens: int, seq: int) -> bytes:
    """One blob holding `payloads` (consecutive blocks from position 0) for `seq`."""
    n = len(payloads) * block_tokens
    if any(len(p) != block_tokens * layout.token_bytes for p in payloads):
        raise LayoutError("a payload of the wrong size")
    blocks = [np.frombuffer(p, np.uint8) for p in payloads]
    head = struct.pack("<IiI", layout.magic, seq, layout.n_stream)
    streams_before = struct.pack("<I", 0) * seq
    streams_after = struct.pack("<I", 0) * (layout.n_stream - seq - 1)
    meta = np.zeros(n, _CELL)
    meta["pos"], meta["n_seq"], meta["seq"] = np.arange(n), 1, seq
    parts: list[bytes | np.ndarray] = [head, streams_before, struct.pack("<I", n), meta,
                                       struct.pack("<II", int(layout.v_trans), len(layout.k))]
    at = 0  # where this layer's part starts in each payload
    for kind, row in layout.k:
        size = block_tokens * row
        parts.append(struct.pack("<iQ", kind, row))
        parts += [b[at:at + size] for b in blocks]
        at += size
    for kind, el, n_embd in layout.v:
        size = block_tokens * el * n_embd
        if layout.v_trans:
            parts.append(struct.pack("<iII", kind, el, n_embd))
            joined = np.concatenate([b[at:at + size].reshape(n_embd, block_tokens * el)
                                     for b in blocks], axis=1)
            parts.append(joined)
        else:
            parts.append(struct.pack("<iQ", kind, el))
            parts += [b[at:at + size] for b in blocks]
        at += size
    parts.append(streams_after)
    return b"".join(parts)
