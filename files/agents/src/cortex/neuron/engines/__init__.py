"""Inference engines behind one interface; llama-cpp-python is the default."""

from __future__ import annotations

from cortex.core.errors import PreflightError
from cortex.neuron.engines.base import Engine, GenerationRequest, LoadedModel, TokenEvent

__all__ = ["Engine", "GenerationRequest", "LoadedModel", "TokenEvent", "get_engine", "harnesses"]


def harnesses() -> list[str]:
    """Engines importable on this host (reported in /discovery)."""
    names = []
    for name in ("llama_cpp", "ctransformers"):
        try:
            get_engine(name, model_id="")
            names.append(name)
        except PreflightError:
            pass
    return names


def get_engine(name: str, *, model_id: str) -> Engine:
    if name in ("", "llama_cpp", "llama.cpp", "llamacpp"):
        try:
            from cortex.neuron.engines.llama_cpp import LlamaCppEngine
        except ImportError as exc:
            raise PreflightError("harness_unavailable", model_id,
                                 f"llama-cpp-python is not importable here: {exc}") from None
        return LlamaCppEngine()
    if name == "ctransformers":
        try:
            from cortex.neuron.engines.ctransformers import CTransformersEngine
        except ImportError as exc:
            raise PreflightError(
                "harness_unavailable", model_id,
                f"the ctransformers engine is optional and not installed ({exc}); install "
                "helexa-cortex[ctransformers] or use harness 'llama_cpp'") from None
        return CTransformersEngine()
    raise PreflightError("unknown_harness", model_id,
                         f"unknown harness {name!r}; this neuron has: {', '.join(harnesses())}")
