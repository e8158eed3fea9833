# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# A minimal stdout callback for the collection's tests (ansible-core 2.19 moved the json
# callback to ansible.posix, which the venv does not carry): one JSON document at the end.
from __future__ import annotations

import json

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: cortex_test_json
type: stdout
short_description: Task results as one JSON document (tests only)
description: [Task results as one JSON document (tests only).]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "cortex_test_json"

    def __init__(self):
        super().__init__()
        self.results = []

    def _add(self, result, **extra):
        data = dict(result._result)
        data.update(extra)
        self.results.append({"task": result._task.get_name(), "host": result._host.get_name(),
                             "result": data})

    def v2_runner_on_ok(self, result, **kwargs):
        self._add(result)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._add(result, failed=True)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._add(result, skipped=True)

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._add(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        self._display.display(json.dumps({"results": self.results}, default=str))

    def v2_on_any(self, *args, **kwargs):
        pass
