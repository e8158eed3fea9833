"""The collection's tests (unit, playbooks, lab) run on the test kit's fixtures
(cortex.testing.plugin, loaded from the agents package's pytest11 entry point).

What they ask of it: neurons that want the test fleet's token and gateways with its admin
key, as deployed; a models_dir of two tiny models, a repository of quants and SmolLM2
(validate.yml asks it a real question).
"""

import pytest

pytest.importorskip("cortex.testing", reason="the agents package (make venv) is not installed")

from cortex.testing.fleet import ADMIN_KEY, TOKEN
from cortex.testing.model_sets import ModelSet


@pytest.fixture(scope="session")
def models_spec() -> ModelSet:
    return ModelSet(tiny=("hello", "think"), quants=True, smollm2=True)


@pytest.fixture(scope="session")
def neuron_token() -> str:
    return TOKEN


@pytest.fixture(scope="session")
def admin_key() -> str:
    return ADMIN_KEY
