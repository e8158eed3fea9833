#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: helexa
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: neuron_info
short_description: Discovery, health, activation and models of one cortex neuron
description:
  - Reads one neuron's C(/discovery), C(/health) and C(/models). Never changes anything.
version_added: 0.1.0
author:
  - helexa (@helexa)
extends_documentation_fragment:
  - helexa.cortex._api
  - helexa.cortex._attributes
  - helexa.cortex._attributes.info_module
"""

EXAMPLES = r"""
- name: Read a neuron
  helexa.cortex.neuron_info:
    url: http://10.0.0.5:13131
    token: "{{ cortex_neuron_token }}"
  register: neuron

- name: Show what it has loaded
  ansible.builtin.debug:
    msg: "{{ neuron.loaded }} (activation {{ neuron.activation.state }})"
"""

RETURN = r"""
discovery:
  description: The neuron's C(/discovery) (hostname, devices, CUDA, harnesses, version).
  returned: success
  type: dict
  sample: {"hostname": "gpu1", "gpu_count": 1, "devices": [{"index": 0, "name": "NVIDIA H100"}]}
health:
  description: The neuron's C(/health) (status, drained, devices, activation, per-model load).
  returned: success
  type: dict
  sample: {"status": "ok", "drained": false, "models": [{"id": "file:smollm2", "in_flight": 0}]}
activation:
  description: The activation state of the neuron's default models (from C(/health)).
  returned: success
  type: dict
  sample: {"state": "ready", "pending": [], "failed": []}
models:
  description: Every model the neuron knows (C(/models)), each with C(status) loaded, loading or available.
  returned: success
  type: list
  elements: dict
  sample: [{"id": "file:smollm2", "status": "loaded", "devices": [0]}]
loaded:
  description: Ids of the loaded models.
  returned: success
  type: list
  elements: str
  sample: ["file:smollm2"]
drained:
  description: Whether the neuron is drained (gateways route it no new requests).
  returned: success
  type: bool
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.helexa.cortex.plugins.module_utils._api import (
    CortexApiError,
    NeuronClient,
    api_argument_spec,
    client_from_module,
    fail,
)


def main():
    argument_spec = dict(api_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    client = client_from_module(module, NeuronClient)
    try:
        health = client.health()
        discovery = client.discovery()
        models = client.models()
    except CortexApiError as exc:
        fail(module, exc, changed=False)
    module.exit_json(
        changed=False,
        discovery=discovery,
        health=health,
        activation=health.get("activation", {}),
        models=models,
        loaded=[m["id"] for m in models if m.get("status") == "loaded"],
        drained=bool(health.get("drained")),
    )


if __name__ == "__main__":
    main()
