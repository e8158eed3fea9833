#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: helexa
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: neuron_model
short_description: Load or unload a model on one cortex neuron
description:
  - Makes one model loaded (O(state=present)) or not loaded (O(state=absent)) on one neuron,
    through its C(/models/load) and C(/models/unload) API.
  - Reads the neuron's C(/models) first, so a model that is already in the wanted state is
    left alone and the task reports no change.
  - A load the neuron rejects before loading (its preflight, for example a quant the model does
    not have) fails the task with the rejection's C(kind) and the neuron's nearest suggestion.
version_added: 0.1.0
author:
  - helexa (@helexa)
extends_documentation_fragment:
  - helexa.cortex._api
  - helexa.cortex._attributes
  - helexa.cortex._attributes.change_module
options:
  name:
    description:
      - The model id as the neuron knows it, for example V(file:smollm2) or V(hf:org/repo).
    type: str
    required: true
    aliases: [model, model_id]
  state:
    description:
      - V(present) loads the model, V(absent) unloads it.
    type: str
    choices: [present, absent]
    default: present
  quant:
    description:
      - The quantisation to load (for a repository or folder with several GGUF files), for
        example V(Q8_0).
      - When the model is already loaded with another quant, it is unloaded and loaded again.
        When that load fails (the neuron's preflight rejects the quant, for example), the model
        is loaded again as it was and the task fails (see RV(restored)).
    type: str
  harness:
    description:
      - The engine harness to load the model with (the neuron's default when omitted).
    type: str
  devices:
    description:
      - Device indexes to place the model on (the neuron chooses when omitted).
      - When the model is already loaded on other devices, it is unloaded and loaded again.
    type: list
    elements: int
  wait:
    description:
      - Wait until the load or unload has finished (the neuron answers when the model is ready).
      - With V(false), a load still running after a few seconds is left to finish on the neuron
        and the task returns with the model C(loading).
    type: bool
    default: true
  timeout:
    description:
      - Seconds a load or unload may take (each HTTP call, and the wait for a model another
        client is loading).
    type: float
    default: 600
"""

EXAMPLES = r"""
- name: Load SmolLM2 on a neuron
  helexa.cortex.neuron_model:
    url: http://10.0.0.5:13131
    token: "{{ cortex_neuron_token }}"
    name: file:smollm2

- name: Load one quant of a hub model on GPU 1
  helexa.cortex.neuron_model:
    url: http://10.0.0.5:13131
    token: "{{ cortex_neuron_token }}"
    name: hf:bartowski/Qwen2.5-7B-Instruct-GGUF
    quant: Q4_K_M
    devices: [1]

- name: Unload it
  helexa.cortex.neuron_model:
    url: http://10.0.0.5:13131
    token: "{{ cortex_neuron_token }}"
    name: hf:bartowski/Qwen2.5-7B-Instruct-GGUF
    state: absent

- name: The same, with the connection options set once for the group
  module_defaults:
    group/helexa.cortex.neuron:
      url: "http://{{ ansible_host }}:13131"
      token: "{{ cortex_neuron_token }}"
  block:
    - name: Load the models this host should serve
      helexa.cortex.neuron_model:
        name: "{{ item }}"
      loop: "{{ cortex_neuron_models | default([]) }}"
"""

RETURN = r"""
model:
  description: The model as the neuron describes it after the task (C(/models) entry), or null when absent.
  returned: success
  type: dict
  sample: {"id": "file:smollm2", "status": "loaded", "devices": [0], "quant": "Q8_0", "harness": "llama_cpp"}
loaded:
  description: Ids of the models loaded on the neuron after the task.
  returned: success
  type: list
  elements: str
  sample: ["file:smollm2"]
kind:
  description: The neuron's error kind when it rejected the call (for example C(quant_not_found)).
  returned: failure
  type: str
  sample: quant_not_found
nearest:
  description: The neuron's suggestion for a rejected value (for example the nearest quant).
  returned: failure, when the neuron suggests one
  type: str
  sample: Q8_0
status:
  description: HTTP status of the failed call.
  returned: failure
  type: int
  sample: 422
body:
  description: The neuron's error body.
  returned: failure
  type: raw
restored:
  description: After a failed reload (another quant, harness or devices), whether the model was
    loaded again as it was before the task.
  returned: failure, when a reload failed
  type: bool
  sample: true
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.helexa.cortex.plugins.module_utils._api import (
    CortexApiError,
    NeuronClient,
    api_argument_spec,
    client_from_module,
    fail,
)


def _state(models):
    """({id: entry} of loaded models, {id: entry} of every model)."""
    by_id = dict((m.get("id"), m) for m in models)
    loaded = dict((k, v) for k, v in by_id.items() if v.get("status") == "loaded")
    return loaded, by_id


def _mismatch(entry, params):
    """Why a loaded model differs from what is asked (None when it does not)."""
    quant, harness, devices = params["quant"], params["harness"], params["devices"]
    have_quant = entry.get("quant")
    if quant and have_quant and quant.upper() != str(have_quant).upper():
        return "quant %s, not %s" % (have_quant, quant)
    if harness and entry.get("harness") and harness != entry.get("harness"):
        return "harness %s, not %s" % (entry.get("harness"), harness)
    if devices and sorted(devices) != sorted(entry.get("devices") or []):
        return "devices %s, not %s" % (entry.get("devices"), devices)
    return None


class NeuronModel(object):
    """One model on one neuron: read the state, decide the action, act on it (not in check
    mode), report the result (re-read, diff)."""

    def __init__(self, module, client):
        self.module = module
        self.client = client
        self.params = module.params
        self.name = module.params["name"]
        self.result = dict(changed=False)
        self.before = {}
        self.entry = None
        self.action = None  # "load", "reload" or "unload"
        self.reload_reason = None

    def read(self):
        """The neuron's models; with wait, after a load another client runs has settled."""
        models = self.client.models()
        if self.params["wait"]:
            models = self._wait_settled(self.params["timeout"])
        self.before, by_id = _state(models)
        self.entry = by_id.get(self.name)

    def _wait_settled(self, timeout):
        deadline = time.time() + timeout
        while True:
            models = self.client.models()
            entry = dict((m.get("id"), m) for m in models).get(self.name)
            if not entry or entry.get("status") != "loading" or time.time() >= deadline:
                return models
            time.sleep(0.5)

    def decide(self):
        status = self.entry.get("status") if self.entry else None
        if self.params["state"] == "present":
            if status == "loaded":
                self.reload_reason = _mismatch(self.entry, self.params)
                self.action = "reload" if self.reload_reason else None
            elif status != "loading":
                self.action = "load"
        elif status in ("loaded", "loading"):
            self.action = "unload"
        self.result["changed"] = self.action is not None
        if self.reload_reason:
            self.result["reload_reason"] = self.reload_reason

    def act(self):
        if self.action is None or self.module.check_mode:
            return
        p = self.params
        if self.action == "unload":
            self.client.unload(self.name, timeout=p["timeout"])
            return
        if self.action == "reload":
            self.client.unload(self.name, timeout=p["timeout"])
        try:
            self.client.load(self.name, quant=p["quant"], harness=p["harness"],
                             devices=p["devices"],
                             timeout=p["timeout"] if p["wait"] else min(p["timeout"], 5))
        except CortexApiError as exc:
            # wait=false: a load still running when the short call times out is fine.
            if p["wait"] or exc.status is not None:
                if self.action == "reload":
                    self.result["restored"] = self._restore()
                raise

    def _restore(self):
        """Load the model again as it was before the task; return whether that worked."""
        entry = self.entry
        try:
            self.client.load(entry["id"], quant=entry.get("quant") or None,
                             harness=entry.get("harness") or None,
                             devices=entry.get("devices") or None,
                             timeout=self.params["timeout"])
        except CortexApiError:
            return False
        return True

    def report(self):
        """The result: the model and the loaded ids after the task (predicted in check mode)."""
        before_ids = sorted(self.before)
        if self.module.check_mode:
            after_ids = before_ids
            if self.action in ("load", "reload"):
                after_ids = sorted(set(before_ids) | set([self.name]))
            elif self.action == "unload":
                after_ids = sorted(set(before_ids) - set([self.name]))
            self.result["model"] = self.entry
        else:
            after, by_id = _state(self.client.models())
            after_ids = sorted(after)
            self.result["model"] = by_id.get(self.name)
            if (self.params["state"] == "present" and self.name not in by_id
                    and self.params["wait"]):
                self.module.fail_json(
                    msg="%s was loaded but the neuron does not list it" % self.name,
                    **self.result)
        self.result["loaded"] = after_ids
        if self.module._diff:
            self.result["diff"] = dict(before=dict(loaded=before_ids),
                                       after=dict(loaded=after_ids))

    def run(self):
        self.read()
        self.decide()
        self.act()
        self.report()
        return self.result


def main():
    argument_spec = dict(
        api_argument_spec(),
        name=dict(type="str", required=True, aliases=["model", "model_id"]),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        quant=dict(type="str"),
        harness=dict(type="str"),
        devices=dict(type="list", elements="int"),
        wait=dict(type="bool", default=True),
        timeout=dict(type="float", default=600),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    task = NeuronModel(module, client_from_module(module, NeuronClient))
    try:
        result = task.run()
    except CortexApiError as exc:
        fail(module, exc, **task.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
