"""Preflight: decide what a load needs before any download or allocation.

Classifies a source's files (`gguf | dense_safetensors | mixed | empty`), picks the GGUF
that matches the requested quant (case-insensitively), and refuses with a typed 422
that says what is available and what was probably meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cortex.core.errors import PreflightError
from cortex.neuron.sources import Hub, Source, list_local

# Quant labels as they appear in GGUF file names (Q4_K_M, IQ3_XXS, Q8_0, F16, BF16...).
_QUANT_RE = re.compile(r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Za-z0-9])",
                       re.IGNORECASE)
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
# Without a requested quant, take the usual best trade-off first.
_PREFERRED = ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q4_1", "Q5_0", "Q6_K", "Q8_0", "F16", "BF16"]


@dataclass
class Plan:
    source: Source
    fmt: str
    files: list[str]  # to fetch, relative to the source (all shards of a split model)
    quant: str | None
    base: Path | None = None  # local directory for file: sources
    available: list[str] = field(default_factory=list)


def classify(files: list[str]) -> str:
    gguf = any(f.lower().endswith(".gguf") for f in files)
    st = any(f.lower().endswith(".safetensors") for f in files)
    return {(True, True): "mixed", (True, False): "gguf", (False, True): "dense_safetensors",
            (False, False): "empty"}[(gguf, st)]


def quant_of(filename: str) -> str | None:
    stem = Path(filename).name
    stem = _SPLIT_RE.sub(".gguf", stem)
    found = _QUANT_RE.findall(stem)
    return found[-1].upper() if found else None


def plan_load(src: Source, *, models_dir: Path, hub: Hub, quant: str = "",
              tensor_parallel: int = 1, harness: str = "llama_cpp") -> Plan:
    model_id = src.canonical
    base: Path | None = None
    if src.scheme == "file":
        found = list_local(models_dir, src)
        if found is None:
            raise PreflightError(
                "source_not_found", model_id,
                f"no {models_dir / src.name}.gguf and no directory {models_dir / src.name}/; "
                "place the GGUF file there (the collection's neuron role can copy it) or "
                "load it from the hub with 'hf:org/name'")
        base, files = found
    else:
        try:
            files = hub.list_files(src.name)
        except Exception as exc:  # any hub failure: name it and keep the cause
            raise PreflightError(
                "repo_fetch_failed", model_id,
                f"could not list {src.name} on the hub: {type(exc).__name__}: {exc}"
                + (" (offline mode: only cached repositories can be used)" if hub.offline
                   else ""),
                ) from None
    fmt = classify(files)
    if fmt == "empty":
        raise PreflightError("empty_repo", model_id,
                             "no .gguf or .safetensors files in this source", files=files[:50])
    if tensor_parallel > 1:
        raise PreflightError("tp_requires_safetensors", model_id,
                             f"tensor_parallel={tensor_parallel} needs dense safetensors weights; "
                             f"{harness} loads GGUF and splits layers across devices instead: "
                             "drop tensor_parallel or set it to 1")
    if fmt == "dense_safetensors":
        raise PreflightError("unsupported_format", model_id,
                             f"the {harness} engine loads GGUF files and this source has only "
                             "safetensors; use a GGUF conversion of the model (often "
                             "published as ORG/NAME-GGUF)", format=fmt)
    ggufs = [f for f in files if f.lower().endswith(".gguf") and not _is_auxiliary(f)]
    chosen, q = _select(model_id, ggufs, quant)
    return Plan(source=src, fmt=fmt, files=_shards(chosen, ggufs), quant=q, base=base,
                available=sorted({quant_of(f) or Path(f).name for f in ggufs}))


def _is_auxiliary(name: str) -> bool:
    # Vision projectors and imatrix files are not the language model.
    low = Path(name).name.lower()
    return low.startswith("mmproj") or "imatrix" in low


def _select(model_id: str, ggufs: list[str], quant: str) -> tuple[str, str | None]:
    by_quant: dict[str, list[str]] = {}
    for f in sorted(ggufs):
        by_quant.setdefault(quant_of(f) or Path(f).name, []).append(f)
    if quant:
        wanted = quant.strip().upper()
        for label, group in by_quant.items():
            if label.upper() == wanted:
                return group[0], label
        # A name that contains it (e.g. quant "Q4_K" matching only one file).
        matches = [f for f in ggufs if wanted.lower() in Path(f).name.lower()]
        if len({quant_of(m) for m in matches}) == 1:
            return sorted(matches)[0], quant_of(matches[0])
        available = sorted(by_quant)
        nearest = min(available, key=lambda a: (edit_distance(wanted.lower(), a.lower()), a))
        raise PreflightError(
            "quant_not_found", model_id,
            f"no GGUF file for quant {quant!r}; available: {', '.join(available)}; "
            f"did you mean {nearest!r}?",
            requested=quant, available=available, nearest=nearest)
    for label in _PREFERRED:
        if label in by_quant:
            return by_quant[label][0], label
    label = sorted(by_quant)[0]
    return by_quant[label][0], quant_of(by_quant[label][0])


def _shards(chosen: str, ggufs: list[str]) -> list[str]:
    m = _SPLIT_RE.search(chosen)
    if not m:
        return [chosen]
    prefix = chosen[: m.start()]
    total = int(m.group(2))
    return [f"{prefix}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
