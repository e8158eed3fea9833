"""JSON through orjson where it is exact, the standard library's json where it is not.

The gateway parses every request and reply and writes every forwarded body; orjson does
each 3-10x faster than json (bench/gateway_overhead.py: gateway CPU a request, before and
after, in the closing note of issue 11). It reads integers past 64 bits as floats and will
not write them: such bodies take json's path, so no number changes on the way through.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# 19 digits in a row may be an integer past 64 bits (orjson would read it as a float): then
# json parses, exactly as before. Found by a translate and a substring search, both in C:
# 41 us for Claude Code's 82 KB request, where re's \d{19} took 1.1 ms.
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


# orjson reads an integer past 64 bits as a float this large or larger.
LOSSY_FLOAT = 2.0**63


def parse(raw: bytes) -> Any | None:
    """`raw` parsed as RFC 8259 JSON by orjson, or None where it refuses it (NaN, Infinity,
    lone surrogates, invalid UTF-8, bad syntax). Not always exact: an integer past 64 bits
    comes back as a float of LOSSY_FLOAT or more (`strict_loads` checks first)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def strict_loads(raw: bytes) -> Any | None:
    """`raw` parsed exactly as json would, or None where orjson refuses it or may not be
    exact: the caller parses it with json then, to name what is wrong or to keep a long
    integer whole."""
    if _LONG_RUN in raw.translate(_DIGITS):
        return None
    return parse(raw)


def loads(raw: bytes) -> Any:
    """Like json.loads (which it falls back to, with its errors), faster."""
    body = strict_loads(raw)
    return json.loads(raw) if body is None else body


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON; json's output where orjson will not write a value (an integer
    past 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()
