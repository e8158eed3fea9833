"""Run by `make collection-test` (ansible-test units, from the staged collection), whose
own pytest plugin makes the collection importable, or plainly: `pytest tests/unit`, when
it is put on sys.path here. The fixtures: tests/conftest.py and cortex.testing.plugin."""

import sys
from pathlib import Path

from cortex.testing.ansible_cli import collection_root, collections_path

sys.path.insert(0, str(collections_path(collection_root(Path(__file__).parent))))
