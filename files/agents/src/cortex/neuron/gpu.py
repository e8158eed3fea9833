"""Device discovery: NVIDIA GPUs through NVML, or the host's memory as one CPU device.

A host without GPUs still reports one device `{index: 0, name: "cpu", kind: "cpu"}`
whose VRAM figures are the memory available for models, so placement and eviction
work the same on every host (DESIGN.md "CPU-only hosts").
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Device:
    index: int
    name: str
    kind: str  # "cuda" | "cpu"
    vram_total_mb: int
    vram_used_mb: int = 0
    vram_free_mb: int = 0
    utilization_pct: int = 0
    temp_c: int | None = None
    compute_capability: str | None = None
    uuid: str | None = None

    def static(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k in ("index", "name", "kind", "vram_total_mb", "compute_capability", "uuid")}

    def live(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k in ("index", "name", "kind", "vram_total_mb", "vram_used_mb", "vram_free_mb",
                         "utilization_pct", "temp_c")}


@dataclass
class GpuInfo:
    cuda_version: str | None = None
    driver_version: str | None = None
    cuda_unavailable_reason: str | None = None
    gpus: list[Device] = field(default_factory=list)


class Devices:
    """Reads devices on demand; NVML is initialised once and kept for the process."""

    def __init__(self, cpu_memory_mb: int = 0) -> None:
        self._cpu_memory_mb = cpu_memory_mb
        self._lock = threading.Lock()
        self._nvml = None
        self.info = self._init_nvml()

    def _init_nvml(self) -> GpuInfo:
        try:
            import pynvml
        except ImportError:
            return GpuInfo(cuda_unavailable_reason="nvidia-ml-py (pynvml) is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            return GpuInfo(cuda_unavailable_reason=f"NVML unavailable: {exc}")
        self._nvml = pynvml
        info = GpuInfo(driver_version=_text(pynvml.nvmlSystemGetDriverVersion()))
        try:
            v = pynvml.nvmlSystemGetCudaDriverVersion()
            info.cuda_version = f"{v // 1000}.{v % 1000 // 10}"
        except pynvml.NVMLError:
            pass
        if pynvml.nvmlDeviceGetCount() == 0:
            info.cuda_unavailable_reason = "NVML found no NVIDIA devices"
        return info

    def snapshot(self, models_mb: int = 0) -> list[Device]:
        """Current devices with live memory figures. `models_mb`: what our models use (CPU)."""
        if self._nvml is not None:
            with self._lock:
                gpus = self._read_gpus()
            if gpus:
                return gpus
        return [self._cpu_device(models_mb)]

    @property
    def has_gpu(self) -> bool:
        return self._nvml is not None and self.info.cuda_unavailable_reason is None

    def _read_gpus(self) -> list[Device]:
        nv = self._nvml
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            dev = Device(index=i, name=_text(nv.nvmlDeviceGetName(h)), kind="cuda",
                         vram_total_mb=mem.total // 2**20, vram_used_mb=mem.used // 2**20,
                         vram_free_mb=mem.free // 2**20)
            util = _optional(nv, lambda h=h: nv.nvmlDeviceGetUtilizationRates(h))
            dev.utilization_pct = util.gpu if util else 0
            dev.temp_c = _optional(nv, lambda h=h: nv.nvmlDeviceGetTemperature(h, 0))
            dev.uuid = _optional(nv, lambda h=h: _text(nv.nvmlDeviceGetUUID(h)))
            cc = _optional(nv, lambda h=h: nv.nvmlDeviceGetCudaComputeCapability(h))
            dev.compute_capability = f"{cc[0]}.{cc[1]}" if cc else None
            out.append(dev)
        return out

    def _cpu_device(self, models_mb: int) -> Device:
        available = _meminfo_mb("MemAvailable")
        if self._cpu_memory_mb:
            total = self._cpu_memory_mb
            free = max(0, min(total - models_mb, available))
        else:
            # What models may use: what they use now plus what the kernel could still give.
            total = models_mb + available
            free = available
        load = os.getloadavg()[0] / max(1, os.cpu_count() or 1)
        return Device(index=0, name="cpu", kind="cpu", vram_total_mb=total, vram_used_mb=models_mb,
                      vram_free_mb=free, utilization_pct=min(100, round(load * 100)))


def _optional(nv, call, default=None):
    """Not every board reports every figure (utilisation, temperature...)."""
    try:
        return call()
    except nv.NVMLError:
        return default


def _meminfo_mb(key: str) -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
