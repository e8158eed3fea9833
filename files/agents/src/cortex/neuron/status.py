"""What a neuron reports about itself: /discovery, /health and /models' bodies.

Read-only views of the composition root; gateways poll /health and /models, so each reads
the state it lists once (a model unloaded or a load ending in between changes nothing here).
"""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import TYPE_CHECKING, Any

import cortex
from cortex.neuron.engines import harnesses

if TYPE_CHECKING:
    from cortex.neuron.composition import Neuron


def discovery(n: Neuron) -> dict[str, Any]:
    info = n.devices.info
    devices = n.device_snapshot()
    body = {
        "hostname": socket.gethostname(), "os": platform.platform(terse=True),
        "kernel": platform.release(), "python": platform.python_version(),
        "cuda_version": info.cuda_version, "driver_version": info.driver_version,
        "devices": [d.static() for d in devices],
        "gpu_count": sum(d.kind == "cuda" for d in devices),
        "harnesses": harnesses(), "max_prompt_tokens": n.cfg.max_prompt_tokens or n.cfg.n_ctx,
        "cpu_count": len(os.sched_getaffinity(0)), "version": cortex.__version__,
    }
    if info.cuda_unavailable_reason:
        body["cuda_unavailable_reason"] = info.cuda_unavailable_reason
    return body


def health(n: Neuron, *, sessions: bool = True) -> dict[str, Any]:
    """`sessions`: list the session tags each model served (core.recent_sessions)."""
    reg = n.registry
    progress = reg.load_progress()
    models = []
    for m in list(reg.models.values()):
        sched = m.scheduler
        models.append({
            "id": m.id, "in_flight": sched.in_flight, "queue_depth": sched.queue_depth,
            "max_in_flight": sched.max_in_flight,
            "slots": {"busy": sched.in_flight, "total": sched.slots},
            "tok_s_decode_aggregate": round(sched.decode_rate(), 1),
            "max_queue_depth": n.cfg.admission.max_queue_depth,
            "queue_wait_secs": round(sched.queue_wait, 3),
            "tok_s_prefill": round(sched.stats.tok_s_prefill, 1),
            "tok_s_decode": round(sched.stats.tok_s_decode, 1),
            "last_used": round(sched.stats.last_used, 3), "vram_used_mb": m.vram_mb,
            "rejections": dict(sched.stats.rejections),
            **({"sessions": m.sessions.report()} if sessions else {}),
            **n.metrics.totals(m.id),
        })
    return {
        "status": "shutting_down" if reg.shutting_down else "ok",
        "drained": n.drained,
        "uptime_secs": round(time.time() - n.started, 1),
        "devices": [d.live() for d in n.device_snapshot()],
        "activation": reg.activation.with_progress(reg.progress),
        "loading": list(progress),
        "load_progress": progress,
        "models": models,
        "cache": reg.sessions.snapshot(),
    }


def models(n: Neuron) -> list[dict[str, Any]]:
    """Loaded models, loads under way, then the models directory's other files."""
    reg = n.registry
    out = [m.describe() | n.metrics.totals(m.id) for m in list(reg.models.values())]
    progress = reg.load_progress()
    out += [{"id": mid, "status": "loading", "devices": [], "vram_used_mb": 0,
             "progress": p} for mid, p in progress.items()]
    known = {m["id"] for m in out}
    models_dir = reg.cfg.models_path
    if models_dir.is_dir():
        for p in sorted(models_dir.iterdir()):
            name = p.name[:-5] if p.name.endswith(".gguf") else p.name
            if p.name.startswith(".") or f"file:{name}" in known:
                continue
            if p.is_file() and not p.name.endswith(".gguf"):
                continue
            out.append({"id": f"file:{name}", "harness": reg.cfg.harness,
                        "status": "available", "devices": [], "vram_used_mb": 0})
    return out
