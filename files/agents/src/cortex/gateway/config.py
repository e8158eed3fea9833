"""cortex.toml and models.toml, as the original cortex reads them (plus a few keys).

Both files are checked key by key at start: a bad or missing file stops the gateway with
the file, the key and the problem, never an empty catalogue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cortex.core.config import (
    build,
    load_config,
    loopback_only,
    parse_listen,
    read_toml,
    refuse_open,
)
from cortex.gateway.store import parse_spec

DEFAULT_PORT, DEFAULT_METRICS_PORT = 31313, 31314
MAX_WINDOW_S = 366 * 86400  # the longest rolling window the spend store keeps buckets for
# Environment names the `cortex` CLI reads for itself, not config overrides.
CLI_ENV = frozenset({"CORTEX_URL", "CORTEX_ADMIN_KEY"})


@dataclass
class GatewaySection:
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    metrics_listen: str = f"0.0.0.0:{DEFAULT_METRICS_PORT}"
    workers: int = 2
    poll_interval_secs: float = 2.0
    neuron_token: str = ""  # sent as a bearer token on every gateway → neuron call
    admin_keys: list[str] = field(default_factory=list)
    max_body_bytes: int = 8 * 1024 * 1024
    # The largest non-streaming reply read from a neuron (an embeddings reply at the
    # neurons' default max_embedding_values is ~27 MB); a larger one is a 502.
    max_reply_bytes: int = 64 * 1024 * 1024
    connect_timeout_secs: float = 3.0
    read_timeout_secs: float = 600.0
    # A reload (HUP) or a stop lets the old workers' requests run this long; a stream still
    # going then is cut (an error event, billed what was relayed).
    graceful_timeout_secs: float = 600.0
    load_timeout_secs: float = 300.0  # a cold load, including a download
    default_keep_alive: str | int = 0  # idle TTL for catalogue models; 0 = never unload
    state_dir: str = "/var/lib/helexa/gateway"
    log_level: str = "info"
    # Concurrency of one gevent worker, and connections it keeps open to each neuron.
    worker_connections: int = 4096
    upstream_pool_size: int = 1024
    # Listening beyond loopback without [entitlements] require_auth is refused unless this
    # says so.
    allow_insecure: bool = False
    # Dashboard event streams (/ui/events) one worker keeps open, and one key (or one
    # anonymous address) may keep open on it; admins may always open a few more.
    ui_max_streams: int = 256
    ui_max_streams_per_key: int = 8

    def __post_init__(self) -> None:
        parse_listen(self.listen, DEFAULT_PORT)
        parse_listen(self.metrics_listen, DEFAULT_METRICS_PORT)
        if self.graceful_timeout_secs <= 0:
            raise ValueError("[gateway] graceful_timeout_secs must be positive")
        if self.poll_interval_secs <= 0 or self.workers < 1:
            raise ValueError("[gateway] poll_interval_secs and workers must be positive")
        if self.ui_max_streams < 1 or self.ui_max_streams_per_key < 1:
            raise ValueError("[gateway] ui_max_streams and ui_max_streams_per_key must be "
                             ">= 1")
        parse_duration(self.default_keep_alive, "[gateway] default_keep_alive")
        for i, key in enumerate(self.admin_keys):
            # An empty key would match a request with no key at all: every admin route open.
            if not key.strip():
                raise ValueError(f"[gateway] admin_keys[{i}] is empty; remove it or set a "
                                 "real key (an empty vault value?)")
        if self.neuron_token != self.neuron_token.strip():
            raise ValueError("[gateway] neuron_token has leading or trailing whitespace")


@dataclass
class EvictionSection:
    strategy: str = "lru"
    defrag_after_cycles: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.defrag_after_cycles, int) or self.defrag_after_cycles < 0:
            raise ValueError("[eviction] defrag_after_cycles must be a whole number >= 0 "
                             "(0 = off)")
        if self.strategy not in ("lru", "priority"):
            raise ValueError(f"[eviction] strategy must be 'lru' or 'priority', "
                             f"got {self.strategy!r}")


@dataclass
class RoutingSection:
    """Where a request for a model loaded on several nodes goes (gateway/affinity.py)."""

    policy: str = "affinity"  # affinity: sessions stick to a replica | least_busy
    # Spill to the least busy replica when the session's is busier by more than this many
    # of its slots and by this factor (SGLang's router: abs 64 requests, rel 1.5).
    balance_abs_slots: float = 1.0
    balance_rel: float = 1.5

    def __post_init__(self) -> None:
        if self.policy not in ("affinity", "least_busy"):
            raise ValueError(f"[routing] policy must be 'affinity' or 'least_busy', "
                             f"got {self.policy!r}")
        if self.balance_abs_slots < 0 or self.balance_rel < 1:
            raise ValueError("[routing] balance_abs_slots must be >= 0 and balance_rel >= 1")


@dataclass
class NeuronEntry:
    name: str
    endpoint: str

    def __post_init__(self) -> None:
        self.endpoint = self.endpoint.rstrip("/")
        hint = (" (an IPv6 address goes in brackets: http://[::1]:13131)"
                if self.endpoint.count(":") > 2 and "[" not in self.endpoint else "")
        try:
            u = urlsplit(self.endpoint)
            u.port  # noqa: B018 - raises ValueError for a port that is not a number
            ok = u.scheme in ("http", "https") and bool(u.hostname) and not u.username
        except ValueError:  # a port that is not a number, an unclosed bracket
            ok = False
        if not ok or re.search(r"\s", self.endpoint):
            raise ValueError(f"[[neurons]] {self.name}: endpoint must be http(s)://host:port, "
                             f"got {self.endpoint!r}{hint}")


@dataclass
class Window:
    kind: str = "balance"
    seconds: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("balance", "rolling"):
            raise ValueError(f"window kind must be 'rolling' or 'balance', got {self.kind!r}")
        if self.kind == "rolling" and not 0 < self.seconds <= MAX_WINDOW_S:
            raise ValueError(f"a rolling window needs 0 < seconds <= {MAX_WINDOW_S} (366 days)"
                             f", got {self.seconds}; use kind = 'balance' for a lifetime cap")


@dataclass
class KeyEntry:
    key: str
    account_id: str
    key_id: str = ""
    hard_cap: int | None = None
    window: Window = field(default_factory=Window)

    def __post_init__(self) -> None:
        # An empty key would be matched by nothing but is a sure sign of a missing secret.
        if not self.key.strip():
            raise ValueError(f"[[entitlements.keys]] account_id = {self.account_id!r}: key is "
                             "empty; set a real key (an empty vault value?)")
        if self.key != self.key.strip():
            raise ValueError(f"[[entitlements.keys]] account_id = {self.account_id!r}: key has "
                             "leading or trailing whitespace (a bearer token never matches it)")
        if self.hard_cap is not None and self.hard_cap < 0:
            raise ValueError(f"[[entitlements.keys]] account_id = {self.account_id!r}: "
                             "hard_cap must be >= 0")

    def __repr__(self) -> str:  # never print the secret
        return f"KeyEntry(account_id={self.account_id!r}, key_id={self.key_id!r})"


@dataclass
class EntitlementsSection:
    require_auth: bool = False
    store: str = ""  # "" / "sqlite" (state_dir) / "sqlite:///path" / "redis://host:port/db"
    keys: list[KeyEntry] = field(default_factory=list)
    # Token counting (/v1/messages/count_tokens, /v1/responses/input_tokens) costs the
    # neuron a render and a tokenization but no spend: calls a key (or an anonymous
    # address) may make a minute, on all workers and hosts together. 0: unlimited.
    count_requests_per_minute: int = 60

    def __post_init__(self) -> None:
        parse_spec(self.store)  # a bad store would make every keyed request a 500
        if self.count_requests_per_minute < 0:
            raise ValueError("[entitlements] count_requests_per_minute must be >= 0 "
                             "(0 = unlimited)")


@dataclass
class GatewayConfig:
    models_config: str = "/etc/cortex/models.toml"
    gateway: GatewaySection = field(default_factory=GatewaySection)
    eviction: EvictionSection = field(default_factory=EvictionSection)
    routing: RoutingSection = field(default_factory=RoutingSection)
    neurons: list[NeuronEntry] = field(default_factory=list)
    entitlements: EntitlementsSection = field(default_factory=EntitlementsSection)

    def __post_init__(self) -> None:
        names = [n.name for n in self.neurons]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"[[neurons]] names must be unique: {sorted(dupes)}")


@dataclass
class Cost:
    input: float | None = None
    output: float | None = None
    cache_read: float | None = None
    cache_write: float | None = None


@dataclass
class Limit:
    context: int | None = None
    input: int | None = None
    output: int | None = None


@dataclass
class Replicas:
    """How many nodes hold a model at once. `min` replicas stay loaded like pins (0: load
    on the first request); more are added while every replica is saturated, up to `max`
    (None: every node it is feasible on)."""

    min: int = 0
    max: int | None = None

    def check(self, where: str) -> None:
        if self.min < 0:
            raise ValueError(f"{where}: replicas.min must be >= 0, got {self.min}")
        if self.max is not None and self.max < max(self.min, 1):
            raise ValueError(f"{where}: replicas.max must be >= max(min, 1) = "
                             f"{max(self.min, 1)}, got {self.max}")


@dataclass
class ModelEntry:
    id: str
    harness: str = "llama_cpp"
    quant: str = ""
    vram_mb: int | None = None
    min_devices: int = 1
    min_device_vram_mb: int | None = None
    pinned_on: list[str] = field(default_factory=list)
    residency_priority: int | None = None
    source: str = ""
    cost: Cost | None = None
    capabilities: list[str] = field(default_factory=list)
    limit: Limit | None = None
    keep_alive: str | int | None = None  # idle TTL; None = [gateway] default_keep_alive
    replicas: Replicas = field(default_factory=Replicas)
    # Every replica saturated this long: one more; a replica past `min` idle this long: out.
    scale_up_after_secs: float = 10.0
    scale_down_after_secs: float = 300.0
    # How the neuron reads the model's tool calls and reasoning (a family name such as
    # "qwen3_coder"), for a chat template it does not recognise; "" = from the template.
    chat_format: str = ""

    def __post_init__(self) -> None:
        self.replicas.check(f"[[models]] {self.id}")
        if self.scale_up_after_secs < 0 or self.scale_down_after_secs < 0:
            raise ValueError(f"[[models]] {self.id}: scale_up_after_secs and "
                             "scale_down_after_secs must be >= 0")
        if not re.fullmatch(r"[a-z0-9_]*", self.chat_format):
            raise ValueError(f"[[models]] {self.id}: chat_format must be a format's name "
                             "such as 'qwen3_coder' (see the neuron's /models)")
        if self.residency_priority is None:
            self.residency_priority = 1000 if self.pinned_on else 100
        if self.keep_alive is not None:
            parse_duration(self.keep_alive, f"[[models]] {self.id}: keep_alive")

    @property
    def load_id(self) -> str:
        """The id a neuron loads: `source:id` (file for plain names, hf for org/name)."""
        if ":" in self.id:
            return self.id
        source = self.source or ("hf" if "/" in self.id else "file")
        return f"{source}:{self.id}"


@dataclass
class ModelsConfig:
    models: list[ModelEntry] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [m.id for m in self.models]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"[[models]] ids must be unique: {sorted(dupes)}")
        for alias, target in self.aliases.items():
            if target not in ids:
                raise ValueError(f"[aliases] {alias!r} points to {target!r}, which is not a "
                                 "[[models]] id (aliases are flat: no chains)")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")


def parse_duration(value: Any, where: str = "duration") -> float:
    """`300`, `"90s"`, `"10m"`, `"2h"`, `"1d"` → seconds; 0 or `"0"` = never; -1 = never."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected seconds or a duration like '10m'")
    if isinstance(value, int | float):
        return max(float(value), 0.0)
    m = _DURATION.match(str(value).strip())
    if not m:
        raise ValueError(f"{where}: {value!r} is not a duration (e.g. 300, '90s', '10m', '2h')")
    unit = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return float(m.group(1)) * unit


def load(path: str | Path) -> tuple[GatewayConfig, ModelsConfig]:
    """cortex.toml and its models.toml; a gateway that would serve anyone on its network
    without a key is refused (ConfigError), at start and on reload."""
    cfg = load_config(GatewayConfig, path, "CORTEX_", ignore=CLI_ENV)
    models_path = Path(cfg.models_config)
    if not models_path.is_absolute():
        models_path = Path(path).parent / models_path
    models = load_models(models_path)
    g = cfg.gateway
    if not (cfg.entitlements.require_auth or g.allow_insecure
            or loopback_only(parse_listen(g.listen, DEFAULT_PORT)[0])):
        raise refuse_open(str(path), f"[gateway] listen = {g.listen!r}",
                          "[entitlements] require_auth is false (anyone there could use "
                          "the models and spend without a key)",
                          "set require_auth = true with [[entitlements.keys]]")
    return cfg, models


def load_models(path: Path) -> ModelsConfig:
    data = read_toml(path, "models_config file not found (set models_config in cortex.toml "
                           "or create the file)")
    return build(ModelsConfig, data, str(path))
