#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: helexa
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: gateway_node
short_description: Drain or undrain a neuron at a cortex gateway
description:
  - Sets a node's routing state at the gateway. A drained node gets no new requests; the
    requests it already has run to the end.
  - With O(state=drained) and O(wait=true), waits until the node has no request in flight or
    queued, so it can be restarted without dropping any.
  - O(token) must be one of the gateway's admin keys.
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
      - The node's name in the gateway's configuration.
    type: str
    required: true
    aliases: [node]
  state:
    description:
      - V(drained) stops routing new requests to the node, V(active) routes them again.
    type: str
    choices: [drained, active]
    default: drained
  wait:
    description:
      - With O(state=drained), wait until the node's requests in flight and queued reach zero.
    type: bool
    default: true
  wait_timeout:
    description:
      - Seconds to wait for the node to become idle; the task fails when it does not.
    type: float
    default: 300
"""

EXAMPLES = r"""
- name: Drain a neuron and wait until it is idle
  helexa.cortex.gateway_node:
    url: http://10.0.0.2:31313
    token: "{{ cortex_gateway_admin_key }}"
    name: "{{ inventory_hostname }}"
    state: drained
    wait_timeout: 600
  delegate_to: localhost

- name: Route requests to it again
  helexa.cortex.gateway_node:
    url: http://10.0.0.2:31313
    token: "{{ cortex_gateway_admin_key }}"
    name: "{{ inventory_hostname }}"
    state: active
  delegate_to: localhost
"""

RETURN = r"""
node:
  description: The node's summary at the gateway after the task (from C(/admin/nodes)).
  returned: success
  type: dict
  sample: {"name": "neuron1", "healthy": true, "drained": true, "models": []}
drained:
  description: Whether the node is drained after the task.
  returned: success
  type: bool
  sample: true
in_flight:
  description: Requests in flight plus queued on the node when the task ended.
  returned: success
  type: int
  sample: 0
waited:
  description: Seconds spent waiting for the node to become idle.
  returned: success
  type: float
  sample: 2.5
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.helexa.cortex.plugins.module_utils._api import (
    CortexApiError,
    GatewayClient,
    api_argument_spec,
    client_from_module,
    fail,
)


def _busy(node):
    return sum(int(m.get("in_flight") or 0) + int(m.get("queue_depth") or 0)
               for m in node.get("models") or [])


def main():
    argument_spec = dict(
        api_argument_spec(),
        name=dict(type="str", required=True, aliases=["node"]),
        state=dict(type="str", default="drained", choices=["drained", "active"]),
        wait=dict(type="bool", default=True),
        wait_timeout=dict(type="float", default=300),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    name, want = p["name"], p["state"] == "drained"
    client = client_from_module(module, GatewayClient)
    result = dict(changed=False, waited=0.0)
    try:
        node = client.node(name)
        if node is None:
            module.fail_json(msg="the gateway has no node named %r" % name, **result)
        before = bool(node.get("drained"))
        result["changed"] = before != want
        if result["changed"] and not module.check_mode:
            reply = client.drain(name) if want else client.undrain(name)
            result["in_flight"] = int(reply.get("in_flight") or 0)
            node = client.node(name) or node  # the gateway reads the neurons afresh
        if want and p["wait"] and not module.check_mode:
            started = time.time()
            while _busy(node) > 0:
                if time.time() - started >= p["wait_timeout"]:
                    result.update(node=node, drained=True, in_flight=_busy(node),
                                  waited=round(time.time() - started, 1))
                    module.fail_json(msg="node %s still has %d request(s) after %ss"
                                     % (name, _busy(node), p["wait_timeout"]), **result)
                time.sleep(0.5)
                node = client.node(name) or node
            result["waited"] = round(time.time() - started, 1)
        result["node"] = node
        result["drained"] = want if (result["changed"] and module.check_mode) \
            else bool(node.get("drained"))
        result["in_flight"] = _busy(node)
        if module._diff:
            result["diff"] = dict(before=dict(drained=before), after=dict(drained=result["drained"]))
    except CortexApiError as exc:
        fail(module, exc, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
