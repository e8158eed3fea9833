"""The fixtures these tests use live in the test kit's pytest plugin, cortex.testing.plugin
(loaded from the package's `pytest11` entry point): models_dir, neuron_factory, neuron,
gateway_factory, gateway, fleet, fleet_factory, neuron_process, gateway_process,
standin_factory, redis_url, store_spec, smollm2_file, small_hub_chunks, models_factory.

The names below stay importable from here for tests that import them (`from conftest
import Served`); new tests import them from cortex.testing.
"""

from cortex.testing.ports import free_port
from cortex.testing.served import Served, ServedGateway

__all__ = ["Served", "ServedGateway", "free_port"]
