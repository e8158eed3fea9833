"""The relay: a request sent to a neuron and its answer back, read once and billed once."""
