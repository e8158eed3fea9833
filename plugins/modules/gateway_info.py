#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: helexa
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: gateway_info
short_description: Fleet health, model catalogue and node states from a cortex gateway
description:
  - Reads a gateway's C(/health) and C(/v1/models), and its C(/admin/nodes) when an admin
    key is given in O(admin_token). Never changes anything.
version_added: 0.1.0
author:
  - helexa (@helexa)
extends_documentation_fragment:
  - helexa.cortex._api
  - helexa.cortex._attributes
  - helexa.cortex._attributes.info_module
options:
  admin_token:
    description:
      - An admin key of the gateway; with it the node states (C(/admin/nodes)) are returned.
    type: str
"""

EXAMPLES = r"""
- name: Read the fleet from the gateway
  helexa.cortex.gateway_info:
    url: http://10.0.0.2:31313
    token: "{{ cortex_api_key }}"
    admin_token: "{{ cortex_gateway_admin_key }}"
  register: fleet

- name: Fail when a node is down
  ansible.builtin.assert:
    that: fleet.nodes | rejectattr('healthy') | list | length == 0
"""

RETURN = r"""
health:
  description: The gateway's C(/health) (status, node counts, unservable models).
  returned: success
  type: dict
  sample: {"status": "ok", "nodes": {"healthy": 2, "total": 2, "drained": 0}, "unservable": []}
models:
  description: The catalogue (C(data) of C(/v1/models)).
  returned: success
  type: list
  elements: dict
  sample: [{"id": "smollm2", "object": "model"}]
nodes:
  description: Node summaries from C(/admin/nodes) (name, endpoint, healthy, drained, models).
  returned: when O(admin_token) is given
  type: list
  elements: dict
  sample: [{"name": "neuron1", "healthy": true, "drained": false, "models": []}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.helexa.cortex.plugins.module_utils._api import (
    CortexApiError,
    GatewayClient,
    api_argument_spec,
    client_from_module,
    fail,
)


def main():
    argument_spec = dict(
        api_argument_spec(),
        admin_token=dict(type="str", no_log=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    client = client_from_module(module, GatewayClient)
    result = dict(changed=False)
    try:
        result["health"] = client.health()
        result["models"] = client.models()
        if module.params["admin_token"]:
            result["nodes"] = client.nodes(token=module.params["admin_token"]).get("nodes", [])
    except CortexApiError as exc:
        fail(module, exc, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
