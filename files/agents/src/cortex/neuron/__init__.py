"""The neuron: the per-host agent that loads GGUF models and serves inference."""
