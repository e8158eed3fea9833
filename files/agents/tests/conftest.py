"""The agents' tests run on the test kit's fixtures (cortex.testing.plugin)."""

import sys

# A venv installed before the kit left the wheel still registers the plugin through its old
# pytest11 entry point; registering it a second time would fail.
pytest_plugins = [] if "cortex.testing.plugin" in sys.modules else ["cortex.testing.plugin"]
