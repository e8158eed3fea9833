"""Typed TOML configuration with environment overrides.

A config file maps onto nested dataclasses. Every key is checked against the dataclass
fields and their types, so a typo or a wrong type is an error at start that names the
file, the key and the fix, never a silently ignored setting.

Environment overrides use a prefix and `__` for nesting: `NEURON_HF__TOKEN=...` sets
`[hf] token`. Values are parsed as TOML literals when they can be (`8`, `true`,
`["a", "b"]`), else taken as strings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Keys whose values are secrets: errors about them name the key, never the value (config
# errors end up in the journal and in Ansible output).
_SECRET = re.compile(r"(^|_)(key|keys|token|secret|password)$")


def is_secret(where: str) -> bool:
    """Whether the key at `where` (`a.b[0]`) holds a secret."""
    return bool(_SECRET.search(re.sub(r"\[\d+\]$", "", where).rsplit(".", 1)[-1]))


def shown(where: str, value: Any) -> str:
    """`value` for an error message, or a placeholder when `where` is a secret."""
    return "<redacted>" if is_secret(where) else repr(value)


class ConfigError(Exception):
    """A configuration problem, with the file and key it concerns."""


def load_config(cls: type[T], path: str | Path | None, env_prefix: str,
                environ: typing.Mapping[str, str] | None = None,
                ignore: typing.Collection[str] = ()) -> T:
    """Read `path` (may be None for defaults only), apply env overrides, build `cls`.
    Names in `ignore` share the prefix but mean something else (a CLI's own variables)."""
    source = str(path) if path else "<defaults>"
    data = read_toml(path) if path else {}
    apply_env(data, env_prefix, os.environ if environ is None else environ, ignore)
    return build(cls, data, source)


def read_toml(path: str | Path, missing: str = "file not found") -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {missing}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def apply_env(data: dict[str, Any], prefix: str, environ: typing.Mapping[str, str],
              ignore: typing.Collection[str] = ()) -> None:
    for name, raw in environ.items():
        if not name.startswith(prefix) or name == prefix or name in ignore:
            continue
        keys = [k.lower() for k in name[len(prefix):].split("__") if k]
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {name}: {key!r} is not a table in the config")
        node[keys[-1]] = parse_env_value(raw)


def parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def build(cls: type[T], data: Any, source: str, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'top level'}: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key {_join(where, key)!r} (known keys: {known})")
        kwargs[name] = coerce(hints[name], value, source, _join(where, key))
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{source}: {where or 'top level'}: {exc}") from None
    except ValueError as exc:  # __post_init__ validation
        raise ConfigError(f"{source}: {exc}") from None


def coerce(hint: Any, value: Any, source: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, dict):  # a table can only mean the table-shaped option
            tables = [o for o in typing.get_args(hint) if dataclasses.is_dataclass(o)]
            if len(tables) == 1:
                return build(tables[0], value, source, where)
        errors = []
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(option, value, source, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{source}: {where!r}: {shown(where, value)} matches none of the "
                          "allowed forms")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise _type_error(source, where, "a list", value)
        return [coerce(item, v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict):
            raise _type_error(source, where, "a table", value)
        return {coerce(key_t, k, source, where): coerce(val_t, v, source, _join(where, k))
                for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source, where)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise _type_error(source, where, "an integer", value)
    if not isinstance(value, hint):
        raise _type_error(source, where, _describe(hint), value)
    return value


def _describe(hint: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _type_error(source: str, where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{source}: key {where!r}: expected {expected}, got "
                       f"{type(value).__name__} {shown(where, value)}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def parse_listen(listen: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `:port` or `[v6]:port` → (host, port)."""
    host, sep, port = listen.rpartition(":")
    # An empty host means every interface, as `:port` does for most servers; the roles
    # write the address they mean (bandit B104).
    if not sep:
        return listen or "0.0.0.0", default_port  # nosec B104
    host = host.strip("[]") or "0.0.0.0"  # nosec B104
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen {listen!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def loopback_only(host: str) -> bool:
    """Whether a listen address is reachable from this host alone (127.0.0.0/8, ::1,
    localhost); any other name or address may be reachable from the network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_open(source: str, listen: str, missing: str, fix: str) -> ConfigError:
    """The error for a server that would listen beyond this host with nothing guarding it."""
    return ConfigError(f"{source}: {listen} is reachable from other hosts and {missing}: "
                       f"{fix}, listen on 127.0.0.1, or set allow_insecure = true to run it "
                       "open on purpose")
