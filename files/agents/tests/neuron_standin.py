"""The neuron-API stand-in moved to cortex.testing.standin (the `standin_factory` fixture
makes them); this name stays for tests that import it from here."""

from cortex.testing.standin import StandIn

__all__ = ["StandIn"]
