"""The collection's tests (unit, playbooks, lab) run on the test kit's fixtures
(cortex.testing.plugin, from the agents' source tree: `make venv` installs it editable).

What they ask of it: neurons that want the test fleet's token and gateways with its admin
key, as deployed; a models_dir of two tiny models, a repository of quants and SmolLM2
(validate.yml asks it a real question).
"""

import sys

import pytest

pytest.importorskip("cortex.testing", reason="the agents package (make venv) is not installed")

from cortex.testing.fleet import ADMIN_KEY, TOKEN
from cortex.testing.model_sets import ModelSet

# A venv installed before the kit left the wheel still registers the plugin through its old
# pytest11 entry point; registering it a second time would fail.
pytest_plugins = [] if "cortex.testing.plugin" in sys.modules else ["cortex.testing.plugin"]


@pytest.fixture(scope="session")
def models_spec() -> ModelSet:
    return ModelSet(tiny=("hello", "think"), quants=True, smollm2=True)


@pytest.fixture(scope="session")
def neuron_token() -> str:
    return TOKEN


@pytest.fixture(scope="session")
def admin_key() -> str:
    return ADMIN_KEY
