"""The neuron's reaches into library internals (cortex/neuron/fence.py): all present in the
installed versions, and a missing one is named at import, not found mid-request."""

from __future__ import annotations

from pathlib import Path

from cortex.neuron import fence
from cortex.neuron.engines.llama_cpp import LlamaCppEngine


def test_everything_the_neuron_reaches_for_exists():
    assert fence.missing() == []


def test_a_moved_internal_is_named():
    class Renamed:
        def __init__(self) -> None:
            self.handle = None

    got = fence.missing({Renamed: ("tokenize",)}, {Renamed: ("model",)}, ("llama_nope",))
    assert got == [f"{__name__}.test_a_moved_internal_is_named.<locals>.Renamed.tokenize()",
                   f"{__name__}.test_a_moved_internal_is_named.<locals>.Renamed.model",
                   "llama_cpp.llama_nope"]


def test_the_attributes_read_from_source_are_there_on_real_objects(models_dir: Path):
    model = LlamaCppEngine().load(models_dir / "tiny-hello.gguf", n_ctx=128, n_threads=1,
                                  n_gpu_layers=0, devices=[], has_gpu=False, n_slots=1)
    try:
        for cls, names in fence.ATTRIBUTES.items():
            obj = {fence.LlamaModel: model._model, fence.LlamaContext: model._ctx,
                   fence.LlamaTokenDataArray: model._cur}.get(cls)
            if obj is not None:
                assert all(hasattr(obj, n) for n in names), (cls, names)
    finally:
        model.close()
