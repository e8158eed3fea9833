"""TOML files for the services tests start: written from dicts, never pieced from f-strings.

Enough of TOML for neuron.toml, cortex.toml and models.toml: strings, numbers, booleans,
arrays, tables and arrays of tables. `merge` lays one config over another (a test's extra
keys over a fixture's defaults), so a key is never written twice.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Config = Mapping[str, Any]
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps(data: Config) -> str:
    """`data` as TOML text (tomllib.loads gives it back)."""
    lines: list[str] = []
    _table(data, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def write(path: Path, data: Config) -> Path:
    path.write_text(dumps(data))
    return path


def merge(base: Config, *overlays: Config | str | None) -> dict[str, Any]:
    """`base` with each overlay laid over it: tables merge key by key, anything else is
    replaced. An overlay may be TOML text (a test's extra lines)."""
    out: dict[str, Any] = dict(base)
    for overlay in overlays:
        if isinstance(overlay, str):
            overlay = tomllib.loads(overlay)
        for key, value in (overlay or {}).items():
            old = out.get(key)
            if isinstance(old, Mapping) and isinstance(value, Mapping):
                value = merge(old, value)
            out[key] = value
    return out


def _table(data: Config, path: tuple[str, ...], lines: list[str]) -> None:
    tables = {k: v for k, v in data.items() if _is_table(v) or _is_table_array(v)}
    for key, value in data.items():
        if key not in tables and value is not None:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables.items():
        sub = (*path, key)
        name = ".".join(map(_key, sub))
        if _is_table(value):
            lines += ["", f"[{name}]"]
            _table(value, sub, lines)
        else:
            for item in value:
                lines += ["", f"[[{name}]]"]
                _table(item, sub, lines)


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(map(_is_table, value))


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"TOML has no number {value!r} here")
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string is a TOML basic string (the same escapes), but for DEL, which
        # TOML wants escaped and JSON leaves as it is.
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_value, value)) + "]"
    if isinstance(value, Mapping):  # an inline table, as inside an array
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
