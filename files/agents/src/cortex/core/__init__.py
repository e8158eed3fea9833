"""Pieces shared by the neuron and the gateway: config, errors, wire helpers."""
