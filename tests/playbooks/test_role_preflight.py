"""The roles refuse an open deployment in preflight, before anything is installed, unless
the inventory says `cortex_allow_insecure: true` in so many words.

Each role runs with `--tags preflight` against this machine (connection local): the checks
are the same as on a real host, and nothing past them runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cortex.testing.ansible_cli import recap

PLAY = """\
- name: Preflight of helexa.cortex.{role}
  hosts: localhost
  connection: local
  gather_facts: true
  roles:
    - role: helexa.cortex.{role}
  post_tasks:
    - name: Say where it would listen
      ansible.builtin.debug:
        msg: "listens on {{{{ cortex_{role}_listen }}}}, metrics on {{{{
          cortex_{role}_metrics_listen | default('-') }}}}"
      tags: preflight
"""
NEURONS = [{"name": "n1", "endpoint": "http://127.0.0.1:13131"}]
KEY = [{"key": "sk-team-key-0123456789", "account_id": "team"}]
TOKEN = "a-token-of-forty-characters-0123456789ab"

# name: (role, settings, what the refusal names)
OPEN = {
    "neuron-without-token": ("neuron", {"cortex_neuron_auth_token": ""},
                             "cortex_neuron_auth_token is empty or shorter"),
    "neuron-short-token": ("neuron", {"cortex_neuron_auth_token": "short"},
                           "cortex_neuron_auth_token is empty or shorter"),
    "gateway-anonymous-clients": ("gateway", {"cortex_gateway_require_auth": False,
                                              "cortex_gateway_api_keys": KEY},
                                  "will not deploy an open gateway"),
    "gateway-without-keys": ("gateway", {"cortex_gateway_api_keys": []},
                             "will not deploy an open gateway"),
    "gateway-without-token": ("gateway", {"cortex_gateway_neuron_token": "",
                                          "cortex_gateway_api_keys": KEY},
                              "will not deploy an open gateway"),
    "gateway-metrics-on-every-interface": ("gateway", {
        "cortex_gateway_api_keys": KEY, "cortex_gateway_metrics_listen": "0.0.0.0:31314"},
        "will not serve its metrics"),
    "gateway-empty-admin-key": ("gateway", {"cortex_gateway_admin_keys": [""],
                                            "cortex_gateway_api_keys": KEY},
                                "must be a non-empty key"),
}


def preflight(ansible, tmp_path: Path, role: str, settings: dict):
    play = tmp_path / f"{role}.yml"
    play.write_text(PLAY.format(role=role))
    extra = tmp_path / "vars.json"
    base = {"cortex_gateway_neurons": NEURONS, "cortex_gateway_neuron_token": TOKEN,
            "cortex_neuron_auth_token": TOKEN, "cortex_neuron_listen": "127.0.0.1:13131",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    extra.write_text(json.dumps({**base, **settings}))
    return ansible.playbook("localhost,", str(play), "--tags", "preflight",
                            "-e", f"@{extra}", ok=False)


@pytest.mark.parametrize("case", list(OPEN))
def test_an_open_deployment_is_refused_unless_the_inventory_allows_it(ansible, tmp_path, case):
    role, settings, names = OPEN[case]
    refused = preflight(ansible, tmp_path, role, settings)
    assert refused.returncode != 0 and recap(refused.stdout)["localhost"]["failed"] == 1
    assert names in refused.stdout, refused.stdout[-3000:]
    if case == "gateway-empty-admin-key":
        return  # an empty key is never allowed: it would open the admin routes to anyone
    allowed = preflight(ansible, tmp_path, role, {**settings, "cortex_allow_insecure": True})
    assert allowed.returncode == 0, allowed.stdout[-3000:]


@pytest.mark.parametrize("role", ["neuron", "gateway"])
def test_a_secure_deployment_passes_preflight(ansible, tmp_path, role):
    settings = {"cortex_gateway_api_keys": KEY} if role == "gateway" else {}
    r = preflight(ansible, tmp_path, role, settings)
    assert r.returncode == 0, r.stdout[-3000:]
    assert TOKEN not in r.stdout + r.stderr
    if role == "gateway":
        # The metrics (spend per key, no auth) on the private address, as a neuron listens;
        # they were on 0.0.0.0.
        assert "metrics on 0.0.0.0" not in r.stdout
        assert re.search(r"metrics on \[?[0-9a-f.:]+\]?:31314", r.stdout), r.stdout[-3000:]
