"""Makes tests/cortex_fleet.py importable for the inventory plugin tests."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
