# -*- coding: utf-8 -*-
# Copyright: helexa
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Private (helexa.cortex._api): the options of this collection's API client.

    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the neuron or gateway, for example V(http://10.0.0.5:13131) (a neuron) or
        V(http://10.0.0.2:31313) (a gateway).
    type: str
    required: true
  token:
    description:
      - Bearer token sent as C(Authorization) on every call.
      - For a neuron, its C(auth_token) (the gateway's neuron token); for a gateway's
        admin routes, one of its admin keys.
    type: str
  timeout:
    description:
      - Seconds to wait for each HTTP call.
    type: float
    default: 60
  validate_certs:
    description:
      - Whether to validate the server's TLS certificate for V(https) URLs.
    type: bool
    default: true
"""
