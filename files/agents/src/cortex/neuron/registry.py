"""Loaded models: single-flighted loads, unloads that free memory, and pre-warming.

An unload frees a model's native memory only once nothing can touch it: the scheduler
thread has exited (its sequences cancelled) and every lease (a tokenize or chat-template
call on an HTTP thread) has been returned.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cortex.core.errors import ApiError, BadRequest, NotFound, PreflightError, Unavailable
from cortex.core.recent_sessions import RecentSessions
from cortex.neuron import families, gguf_header
from cortex.neuron.config import DefaultModel, NeuronConfig
from cortex.neuron.engines import LoadedModel, get_engine
from cortex.neuron.gpu import Devices
from cortex.neuron.metrics import NeuronMetrics
from cortex.neuron.preflight import Plan, plan_load
from cortex.neuron.progress import LoadProgress
from cortex.neuron.scheduler import ModelScheduler
from cortex.neuron.session_cache import MB, SessionCache
from cortex.neuron.sources import Hub, parse_model_id

log = logging.getLogger(__name__)


@dataclass
class LoadRequest:
    model_id: str
    quant: str = ""
    harness: str = ""
    tensor_parallel: int = 1
    devices: list[int] = field(default_factory=list)
    parallel: int | None = None  # slots; None: the neuron's `parallel` setting
    # No generation context, only embeddings; None: so when the GGUF names a pooling and
    # has no chat template (an embedding model).
    embeddings_only: bool | None = None
    # The model family's name (families.FAMILIES) for a template we do not recognise;
    # "": read off the template.
    chat_format: str = ""


CPU_AUTO_SLOTS = 4  # parallel = 0 on a host without GPUs (issue 10: 1.77x at 4 on 2 cores)
GPU_AUTO_MAX_SLOTS = 16
# An `if_idle` unload counts a prompt rendered with no job submitted since, this recently,
# as a request on its way to the queue (neither leasing the model nor queued yet; a request
# refused between the two, e.g. for a bad field, holds the model this long at most).
IDLE_GRACE_SECS = 1.0


@dataclass
class Loaded:
    id: str
    harness: str
    path: Path
    quant: str | None
    devices: list[int]
    model: LoadedModel
    scheduler: ModelScheduler
    vram_mb: int
    load_seconds: float
    loaded_at: float = field(default_factory=time.time)
    embeddings_only: bool = False
    # The embeddings context's share of vram_mb: counted (by Registry.reserve_embeddings)
    # before the model's scheduler thread makes it on first use; at load when embeddings only.
    embeddings_mb: int = 0
    embeddings_need_mb: int = 0  # its estimate
    family: families.Family = field(default_factory=lambda: families.FAMILIES["generic"])
    chat_format_set: bool = False  # named by the load request, not read off the template
    sessions: RecentSessions = field(default_factory=RecentSessions)  # served lately (/health)
    _leases: int = 0
    _prompt_at: float = 0.0  # when a request's prompt was last rendered (monotonic)
    _closing: bool = False
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @contextlib.contextmanager
    def lease(self, *, then_submit: bool = False) -> Iterator[LoadedModel]:
        """Use the model on this thread (tokenize, templates); an unload waits for it.
        `then_submit`: a request's prompt, which goes to the scheduler's queue next (an
        if_idle unload counts it as running until it is there)."""
        with self._cond:
            if self._closing:
                raise Unavailable(f"model {self.id} was unloaded", code="model_unloaded",
                                  retry_after=2)
            self._leases += 1
        try:
            yield self.model
        finally:
            with self._cond:
                self._leases -= 1
                if then_submit:
                    self._prompt_at = time.monotonic()
                self._cond.notify_all()

    def stop_if_idle(self) -> bool:
        """Refuse new work if no request uses the model: none running or queued, none
        rendering its prompt (a lease), none between its prompt and the queue (rendered
        with no job submitted since, within IDLE_GRACE_SECS). Then True (`close` frees it);
        else False, and nothing changed."""
        with self._cond:
            on_its_way = (self._prompt_at > self.scheduler.submitted_at
                          and time.monotonic() - self._prompt_at < IDLE_GRACE_SECS)
            if (self._closing or self._leases or on_its_way
                    or not self.scheduler.stop_if_idle()):
                return False
            self._closing = True
            return True

    def close(self, reason: ApiError) -> None:
        """Refuse new leases, stop the scheduler (it exits), wait out the leases, free."""
        with self._cond:
            self._closing = True
        self.scheduler.close(reason)
        with self._cond:
            while self._leases:
                if not self._cond.wait(timeout=30):
                    log.warning("unload of %s is waiting for %d tokenize/template call(s)",
                                self.id, self._leases)
        self.model.close()

    def __post_init__(self) -> None:
        # What a model is never changes while it is loaded: read it once, here, so that a
        # poll (/models) never touches the engine's model, which an unload frees under it.
        model = self.model
        chat = not self.embeddings_only
        caps = capabilities(model.chat_template or "" if chat else None,
                            embeddings=bool(model.embedding_ctx), family=self.family)
        self._facts: dict[str, Any] = {
            "architecture": model.metadata.get("general.architecture"),
            "capabilities": caps,
            "tool_call": "tool_call" in caps, "reasoning": "reasoning" in caps,
            "limit": {"context": model.n_ctx, "output": model.n_ctx if chat else 0},
            # How its tool calls and reasoning are read (families/), and whether the load
            # request named that or the template told it.
            "chat_format": self.family.name if chat else None,
            "chat_format_source": ("load request" if self.chat_format_set else "template")
            if chat else None,
        }
        if model.embedding_ctx:
            self._facts["embeddings"] = {"dimensions": model.embedding_dim,
                                         "pooling": model.pooling}

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id, "harness": self.harness, "status": "loaded", "devices": self.devices,
            "vram_used_mb": self.vram_mb, "quant": self.quant, "file": self.path.name,
            "slots": self.scheduler.slots, "servable": {"ok": True},
            "loaded_at": self.loaded_at, "load_seconds": round(self.load_seconds, 3),
            "embeddings_only": self.embeddings_only,
        } | self._facts


def capabilities(template: str | None, *, embeddings: bool = False,
                 family: families.Family | None = None) -> list[str]:
    """What a model serves; `template` None: embeddings only, no chat."""
    caps = []
    if template is not None:
        caps += ["chat", "completion"]
        if "tools" in template:
            caps.append("tool_call")
        if (family or families.detect(template)).knows_reasoning(template):
            caps.append("reasoning")
    if embeddings:
        caps.append("embeddings")
    return caps


class Activation:
    """Progress of pre-warming the configured default models, for /health."""

    def __init__(self, pending: list[str]) -> None:
        self.pending = list(pending)
        self.in_progress: str | None = None
        self.completed: list[str] = []
        self.failed: list[dict[str, str]] = []

    @property
    def state(self) -> str:
        return "pre_warming" if self.pending or self.in_progress else "ready"

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "pending": list(self.pending),
                "in_progress": self.in_progress, "completed": list(self.completed),
                "failed": list(self.failed)}

    def with_progress(self, progress: dict[str, LoadProgress]) -> dict[str, Any]:
        snap = self.snapshot()
        p = progress.get(self.in_progress or "")
        if p is not None:
            snap["progress"] = p.snapshot()
        return snap


class Registry:
    def __init__(self, cfg: NeuronConfig, devices: Devices, metrics: NeuronMetrics) -> None:
        self.cfg = cfg
        self.devices = devices
        self.metrics = metrics
        self.hub = Hub(cfg.hf, Path(cfg.cache_dir))
        self.models: dict[str, Loaded] = {}
        self._loading: dict[str, Future] = {}
        self.progress: dict[str, LoadProgress] = {}  # loads under way, by canonical id
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()  # one engine load at a time keeps memory honest
        self.shutting_down = False
        self.activation = Activation([m.model_id for m in cfg.default_model_specs()])
        self.sessions = SessionCache(cfg.cache, Path(cfg.cache_dir))
        metrics.watch_sessions(self.sessions)

    # -- lookup ------------------------------------------------------------------------
    def find(self, name: object) -> Loaded:
        if not isinstance(name, str) or not name:
            raise BadRequest("'model' is required: the id of a loaded model",
                             code="missing_model_field", param="model")
        if name in self.models:
            return self.models[name]
        try:
            canonical = parse_model_id(name).canonical
        except ApiError:
            canonical = name
        if canonical in self.models:
            return self.models[canonical]
        # A bare name ("smollm2") matches a loaded "file:smollm2" or "hf:org/smollm2".
        matches = [m for mid, m in self.models.items()
                   if mid.split(":", 1)[-1] == name or mid.rsplit("/", 1)[-1] == name]
        if len(matches) == 1:
            return matches[0]
        raise NotFound(f"model {name!r} is not loaded on this neuron; loaded: "
                       f"{', '.join(self.models) or 'none'}. Load it with POST /models/load.",
                       code="model_not_found", param="model")

    def load_progress(self) -> dict[str, dict[str, Any]]:
        """The loads under way, by id, with their progress: one read, so a caller that
        also lists them (`/health`'s `loading`) never names a load this left out, or the
        other way round (`progress` and `_loading` change together, under the lock)."""
        return {k: p.snapshot() for k, p in list(self.progress.items())}

    def used_mb(self) -> int:
        """What models hold; on a host without GPUs (where models live in host memory) the
        session cache's RAM too."""
        used = sum(m.vram_mb for m in self.models.values())
        if not self.devices.has_gpu:
            used += self.sessions.ram_used // MB
        return used

    def _free_mb(self, devices: list[int]) -> int:
        return sum(d.vram_free_mb for d in self.devices.snapshot(self.used_mb())
                   if not devices or d.index in devices)

    # -- load ----------------------------------------------------------------------------
    def load(self, req: LoadRequest) -> tuple[Loaded, bool]:
        """Load a model, or join a load of it already under way. Returns (model, fresh)."""
        if self.shutting_down:
            raise Unavailable("the neuron is shutting down", code="shutting_down",
                              retry_after=15)
        src = parse_model_id(req.model_id)
        key = src.canonical
        with self._lock:
            if key in self.models:
                return self.models[key], False
            fut = self._loading.get(key)
            owner = fut is None
            if owner:
                fut = self._loading[key] = Future()
                progress = self.progress[key] = LoadProgress(key)
        if not owner:
            return fut.result(), False
        started = time.monotonic()
        try:
            loaded = self._load(key, src, req, progress)
        except BaseException as exc:
            fut.set_exception(exc)
            self.metrics.load_seconds.labels(key, "failed").observe(time.monotonic() - started)
            raise
        else:
            fut.set_result(loaded)
            self.metrics.load_seconds.labels(key, "ok").observe(time.monotonic() - started)
            return loaded, True
        finally:
            with self._lock:
                self._loading.pop(key, None)
                self.progress.pop(key, None)

    def _load(self, key: str, src: Any, req: LoadRequest, progress: LoadProgress) -> Loaded:
        harness = req.harness or self.cfg.harness
        if req.chat_format:
            families.named(req.chat_format)  # a 400 before any download
        engine = get_engine(harness, model_id=key)
        plan = plan_load(src, models_dir=self.cfg.models_path, hub=self.hub, quant=req.quant,
                         tensor_parallel=req.tensor_parallel, harness=harness)
        path = self._fetch(plan, key, progress)
        try:
            meta = gguf_header.read_metadata(path, check_tensors=True)
            facts = gguf_header.describe(meta)
        except (OSError, gguf_header.GGUFError) as exc:
            raise PreflightError("invalid_gguf", key, f"{path.name}: {exc}") from None
        n_ctx = min(self.cfg.n_ctx, facts["context_length"] or self.cfg.n_ctx)
        embeddings_only = req.embeddings_only
        if embeddings_only is None:
            arch = facts["architecture"]
            embeddings_only = bool(meta.get(f"{arch}.pooling_type")) and not facts[
                "chat_template"]
        embed_mb = gguf_header.embeddings_mb(meta, n_ctx)
        devices = self._check_devices(req.devices, key)
        progress.begin("queued")  # behind another model's engine load, if any
        with self._engine_lock:
            free = self._free_mb(devices)
            if embeddings_only:
                slots, need = 0, gguf_header.estimate_mb(path, meta, 0) + embed_mb
            else:
                slots = self._slots(req, path, meta, n_ctx, free)
                need = gguf_header.estimate_mb(path, meta, n_ctx * slots)
            if need > free and not self.devices.has_gpu and self.sessions.ram_used:
                # Models come before cached sessions in host memory.
                self.sessions.shrink(need - free)
                free = self._free_mb(devices)
            if need > free:
                raise Unavailable(
                    f"{key} needs about {need} MB and the device has {free} MB free; unload "
                    "a model or choose another node", code="insufficient_vram", retry_after=5,
                    need_mb=need, free_mb=free)
            t0 = time.monotonic()
            # llama.cpp counts the bytes of every shard (they sit side by side).
            progress.begin("loading", total=sum(_size(path.parent / Path(f).name)
                                                for f in plan.files))
            try:
                model = engine.load(path, n_ctx=n_ctx, n_threads=self.cfg.n_threads,
                                    n_gpu_layers=self.cfg.n_gpu_layers, devices=devices,
                                    has_gpu=self.devices.has_gpu, n_slots=slots,
                                    embeddings_only=embeddings_only,
                                    progress=lambda f: progress.update(fraction=f))
            except (ValueError, RuntimeError, OSError) as exc:
                raise PreflightError("engine_load_failed", key,
                                     f"{harness} could not load {path.name}: {exc}") from None
            seconds = time.monotonic() - t0
            family = families.resolve(model.chat_template, req.chat_format)
            # The family's markers are special tokens its parser must see in the output.
            model.shown_tokens = families.marker_tokens(family, model)
            self._attach_sessions(key, path, model)
            scheduler = ModelScheduler(key, model, self.cfg.admission, self.metrics)
            loaded = Loaded(id=key, harness=harness, path=path, quant=plan.quant,
                            devices=devices or [0], model=model, scheduler=scheduler,
                            vram_mb=max(model.size_mb, need), load_seconds=seconds,
                            embeddings_only=embeddings_only,
                            embeddings_mb=embed_mb if embeddings_only else 0,
                            embeddings_need_mb=embed_mb, family=family,
                            chat_format_set=bool(req.chat_format))
            with self._lock:
                self.models[key] = loaded
        self.metrics.loaded.labels(key).set(1)
        log.info("loaded %s (%s, %s) in %.2f s, ~%d MB, %d slot(s) of %d tokens", key,
                 path.name, plan.quant, seconds, loaded.vram_mb, model.n_slots, model.n_ctx)
        return loaded

    def _attach_sessions(self, key: str, path: Path, model: LoadedModel) -> None:
        """Give the model its view of the session cache: blocks valid only for this exact
        file (path, size, modification time) loaded with these parameters."""
        if not self.sessions.ram_budget:
            return
        try:
            identity = model.cache_identity()
            if identity is None:
                return
            st = path.stat()
            identity |= {"file": str(path.resolve()), "size": st.st_size,
                         "mtime_ns": st.st_mtime_ns}
            model.attach_cache(self.sessions.view(key, identity))
        except Exception:  # the model serves without it
            log.exception("session cache off for %s", key)

    def reserve_embeddings(self, loaded: Loaded) -> None:
        """Count a chat model's embeddings context before its scheduler thread makes it (on
        first use): a 503 when it does not fit, as a load that does not fit."""
        if loaded.embeddings_mb:
            return
        with self._engine_lock:  # against loads, which count what is free the same way
            if loaded.embeddings_mb:
                return
            need = loaded.embeddings_need_mb
            free = sum(d.vram_free_mb for d in self.devices.snapshot(self.used_mb())
                       if d.index in loaded.devices)
            if need > free:
                raise Unavailable(
                    f"embeddings on {loaded.id} need a context of about {need} MB and the "
                    f"device has {free} MB free; unload a model, or load one for embeddings "
                    "alone", code="insufficient_vram", retry_after=5, need_mb=need,
                    free_mb=free)
            loaded.embeddings_mb = need
            loaded.vram_mb += need

    def _slots(self, req: LoadRequest, path: Path, meta: dict, n_ctx: int, free: int) -> int:
        """The load's `parallel`, or the neuron's; 0 = what the device's memory holds."""
        slots = req.parallel if req.parallel is not None else self.cfg.parallel
        if slots:
            return slots
        if not self.devices.has_gpu:
            return CPU_AUTO_SLOTS
        weights = gguf_header.estimate_mb(path, meta, 0)
        per_slot = max(1, gguf_header.estimate_mb(path, meta, n_ctx) - weights)
        return max(1, min(GPU_AUTO_MAX_SLOTS, (free - weights) // per_slot))

    def _fetch(self, plan: Plan, key: str, progress: LoadProgress) -> Path:
        if plan.base is not None:
            return plan.base / plan.files[0]
        repo = plan.source.name
        sizes = {name: self.hub.remote_size(repo, name) for name in plan.files}
        moving = [n for n in plan.files if sizes[n]]  # cached files move no bytes
        if moving:
            progress.begin("downloading", total=sum(sizes[n] or 0 for n in moving))
        finished = 0
        paths = []
        for name in plan.files:
            try:
                paths.append(self.hub.download(
                    repo, name, on_bytes=lambda n, base=finished: progress.update(done=base + n)))
                if sizes[name]:
                    finished += sizes[name] or 0
                    progress.update(done=finished)
            except Exception as exc:
                raise PreflightError("repo_fetch_failed", key,
                                     f"download of {name} failed: {type(exc).__name__}: {exc}"
                                     ) from None
        return paths[0]

    def _check_devices(self, wanted: list[int], key: str) -> list[int]:
        if not wanted:
            return []
        present = {d.index for d in self.devices.snapshot(self.used_mb())}
        missing = [d for d in wanted if d not in present]
        if missing:
            raise Unavailable(f"device(s) {missing} not present on this neuron (it has "
                              f"{sorted(present)})", code="device_unavailable", retry_after=5)
        return wanted

    # -- unload --------------------------------------------------------------------------
    def unload(self, model_id: object, *, if_idle: bool = False) -> Loaded:
        """Free a model; running and queued requests end with `model_unloaded`. With
        `if_idle` (a gateway's eviction or idle reaper, deciding on a poll that may be
        seconds old), only if nothing uses it, checked here under the model's own locks:
        409 `model_busy` otherwise, and nothing is cut."""
        if not isinstance(model_id, str) or not model_id:
            raise BadRequest("'model_id' is required", code="missing_model_id",
                             param="model_id")
        reason = Unavailable(f"model {model_id} was unloaded", code="model_unloaded",
                             retry_after=2)
        with self._lock:
            loaded = self.find(model_id)
            if if_idle and not loaded.stop_if_idle():
                raise ApiError(f"model {loaded.id} is in use (requests running, queued or "
                               "being prepared); it stays loaded", code="model_busy",
                               status=409, type="conflict_error")
            del self.models[loaded.id]
        loaded.close(reason)
        self.metrics.forget(loaded.id)
        del loaded.model
        gc.collect()
        _trim_heap()
        log.info("unloaded %s", loaded.id)
        return loaded

    def shutdown(self) -> None:
        self.shutting_down = True
        for mid in list(self.models):
            with contextlib.suppress(ApiError):
                self.unload(mid)

    # -- pre-warm ------------------------------------------------------------------------
    def prewarm(self, specs: list[DefaultModel]) -> threading.Thread:
        def run() -> None:
            for spec in specs:
                act = self.activation
                act.pending.remove(spec.model_id)
                act.in_progress = spec.model_id
                try:
                    self.load(LoadRequest(spec.model_id, spec.quant, spec.harness,
                                          devices=spec.devices,
                                          chat_format=spec.chat_format))
                    act.completed.append(spec.model_id)
                except ApiError as exc:
                    log.error("pre-warm of %s failed: %s", spec.model_id, exc.message)
                    act.failed.append({"model_id": spec.model_id, "error": exc.message})
                except Exception as exc:
                    log.exception("pre-warm of %s failed", spec.model_id)
                    act.failed.append({"model_id": spec.model_id, "error": str(exc)})
                finally:
                    act.in_progress = None

        t = threading.Thread(target=run, name="prewarm", daemon=True)
        t.start()
        return t


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS so an unload shows in RSS at once."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
