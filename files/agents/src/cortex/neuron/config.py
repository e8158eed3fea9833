"""neuron.toml: the node agent's settings (env overrides with the `NEURON_` prefix)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cortex.core.config import load_config, loopback_only, parse_listen, refuse_open

DEFAULT_PORT = 13131
MAX_PARALLEL = 256  # llama.cpp's LLAMA_MAX_SEQ


@dataclass
class HubConfig:
    endpoint: str = ""  # empty: huggingface_hub's default (or HF_ENDPOINT)
    token: str = ""
    offline: bool = False


@dataclass
class AdmissionConfig:
    # Requests generating at once per model; 0 = the model's slot count (`parallel`). The
    # queue in front of the slots is what absorbs bursts.
    max_in_flight: int = 0
    max_queue_depth: int = 8
    max_wait_secs: float = 30.0
    max_per_principal: int = 2
    # An idle model that gets a request waits this long for more to arrive (until none has
    # for this long, or its slots are full): a burst is prefilled in one step, not two.
    gather_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_in_flight < 0:
            raise ValueError("admission.max_in_flight must be 0 (the slot count) or more")
        if self.max_queue_depth < 0 or self.max_per_principal < 1 or self.max_wait_secs <= 0:
            raise ValueError("admission limits must be positive (max_queue_depth may be 0)")
        if not 0 <= self.gather_ms <= 1000:
            raise ValueError("admission.gather_ms must be between 0 and 1000 (0: no wait)")


@dataclass
class SamplingDefaults:
    """Used where a request does not say: llama-cpp-python's own defaults. No repeat penalty,
    as llama-server, vLLM and llama-cpp-python (OpenAI has none): at 1.1, over a window that
    holds the prompt's chat markup, greedy answers rambled where the engine's stopped."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0


@dataclass
class CacheConfig:
    """The session cache (`[cache]`): KV blocks of earlier prompts kept per account, in host
    RAM and on disk, restored instead of prefilled again (neuron/session_cache.py)."""

    enabled: bool = True
    ram_mb: int = 0  # 0: an eighth of the host's memory, at most 8192
    disk_dir: str = ""  # "": <cache_dir>/kv
    disk_mb: int = 4096  # 0: no disk tier
    disk_ttl_secs: int = 86400  # a block file unused this long is removed

    def __post_init__(self) -> None:
        if self.ram_mb < 0 or self.disk_mb < 0:
            raise ValueError("cache.ram_mb and cache.disk_mb must be 0 or more")
        if self.disk_ttl_secs < 60:
            raise ValueError("cache.disk_ttl_secs must be at least 60")


@dataclass
class DefaultModel:
    model_id: str
    quant: str = ""
    harness: str = ""
    devices: list[int] = field(default_factory=list)
    chat_format: str = ""  # a model family's name for a template we do not recognise


@dataclass
class NeuronConfig:
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    models_dir: str = "/var/lib/helexa/neuron/models"
    cache_dir: str = "/var/cache/helexa/neuron"
    auth_token: str = ""
    # Listening beyond loopback with no auth_token is refused unless this says so.
    allow_insecure: bool = False
    default_models: list[str | DefaultModel] = field(default_factory=list)
    harness: str = "llama_cpp"
    # Engine settings applied to every model this neuron loads.
    n_ctx: int = 4096
    n_threads: int = 0  # 0: all cores this process may use
    n_gpu_layers: int = -1  # -1: offload everything when a GPU build is present
    # Sequences each model decodes together (continuous batching), each with n_ctx of
    # context; 0 = auto: as many as the device memory holds on GPUs (up to 16), 4 on CPU.
    # A load may override it (`"parallel": N` in POST /models/load).
    parallel: int = 0
    # Memory offered to models on a host without GPUs; 0 = what the kernel says is available.
    cpu_memory_mb: int = 0
    http_threads: int = 32
    max_body_bytes: int = 4 * 1024 * 1024
    max_prompt_tokens: int = 0  # 0: the model's context length
    # Inputs x dimensions one embeddings request may ask for (the reply's size: ~13 bytes
    # each as JSON numbers, 5.3 as base64); 2,048 inputs of 1,024 dimensions by default.
    max_embedding_values: int = 2048 * 1024
    # Streams write at most this often (the first token goes at once); 0 writes every token.
    stream_interval_ms: int = 0
    log_level: str = "info"
    hf: HubConfig = field(default_factory=HubConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        parse_listen(self.listen, DEFAULT_PORT)  # raises with the key's name
        if self.log_level.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be one of debug, info, warning, error")
        if self.n_ctx < 64:
            raise ValueError("n_ctx must be at least 64")
        if self.max_embedding_values < 1:
            raise ValueError("max_embedding_values must be 1 or more")
        if not 0 <= self.parallel <= MAX_PARALLEL:
            raise ValueError(f"parallel must be 0 (auto) to {MAX_PARALLEL}")

    @property
    def bind(self) -> tuple[str, int]:
        return parse_listen(self.listen, DEFAULT_PORT)

    def default_model_specs(self) -> list[DefaultModel]:
        return [m if isinstance(m, DefaultModel) else DefaultModel(model_id=m)
                for m in self.default_models]

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir)


def load(path: str | Path | None) -> NeuronConfig:
    """The neuron's configuration from `path` (None: the defaults) and the environment; a
    neuron that anyone on its network could drive is refused (ConfigError)."""
    cfg = load_config(NeuronConfig, path, "NEURON_")
    if not (cfg.auth_token or cfg.allow_insecure or loopback_only(cfg.bind[0])):
        raise refuse_open(str(path or "<defaults>"), f"listen = {cfg.listen!r}",
                          "auth_token is empty (anyone there could load and run models)",
                          "set auth_token (the gateways' neuron_token)")
    return cfg
