"""The gateway: one OpenAI- and Anthropic-compatible API over every neuron."""
