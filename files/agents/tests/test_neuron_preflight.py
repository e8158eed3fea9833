"""A load's preflight choices: what a repository holds, quant labels, nearest names."""

from __future__ import annotations

from cortex.neuron.preflight import classify, edit_distance, quant_of


def test_classify_and_quant_labels():
    assert classify(["a.gguf"]) == "gguf"
    assert classify(["a.gguf", "b.safetensors"]) == "mixed"
    assert classify(["b.safetensors"]) == "dense_safetensors"
    assert classify(["README.md"]) == "empty"
    assert quant_of("Qwen2.5-7B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_of("model.iq3_xxs.gguf") == "IQ3_XXS"
    assert quant_of("big-Q8_0-00001-of-00003.gguf") == "Q8_0"
    assert quant_of("model-f16.gguf") == "F16"
    assert edit_distance("q6k", "q6_k") == 1
