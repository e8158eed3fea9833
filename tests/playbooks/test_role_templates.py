"""The configuration files the roles write pass the services' own check, as the roles
validate them on hosts (`neuron check-config`, `cortex check-config`): here, the templates
rendered with each role's defaults by ansible-playbook on this machine, for a secure
deployment and for an open one that the inventory allows (`cortex_allow_insecure`). Both
bind beyond loopback, where a service with no token or no keys refuses to start unless its
file says `allow_insecure = true`. The systemd units render one directive a line, with
whole absolute paths where systemd wants paths (a glued line fails the unit at start)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
PLAY = """\
- name: Render the roles' configuration files
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {root}/roles/_common/defaults/main.yml
    - {root}/roles/neuron/defaults/main.yml
    - {root}/roles/gateway/defaults/main.yml
    - {root}/roles/gateway/vars/main.yml
  tasks:
    - name: Render them
      ansible.builtin.template:
        src: "{root}/roles/{{{{ item.role }}}}/templates/{{{{ item.file }}}}.j2"
        dest: "{out}/{{{{ item.file }}}}"
        mode: "0600"
      loop:
        - {{role: neuron, file: neuron.toml}}
        - {{role: gateway, file: models.toml}}
        - {{role: gateway, file: cortex.toml}}
        - {{role: neuron, file: helexa-neuron.service}}
        - {{role: gateway, file: helexa-cortex.service}}
"""
TOKEN = "a-token-of-forty-characters-0123456789ab"
KEYS = [{"key": "sk-team-key-0123456789", "account_id": "team"}]
CASES = {
    "secure": {"cortex_neuron_auth_token": TOKEN, "cortex_gateway_neuron_token": TOKEN,
               "cortex_gateway_api_keys": KEYS},
    "open, allowed": {"cortex_allow_insecure": True, "cortex_neuron_auth_token": "",
                      "cortex_gateway_neuron_token": "", "cortex_gateway_require_auth": False,
                      "cortex_neuron_cache_disk_dir": "/var/lib/helexa/neuron/kv"},
}
PATHS = ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths")


@pytest.mark.parametrize("case", list(CASES))
def test_the_roles_config_files_pass_the_services_check(ansible, tmp_path, case):
    import subprocess

    out = tmp_path / "out"
    out.mkdir()
    play = tmp_path / "render.yml"
    play.write_text(PLAY.format(root=ansible.root, out=out))
    settings = {"cortex_neuron_listen": "10.1.2.3:13131",  # beyond loopback, as on hosts
                "cortex_gateway_listen": "0.0.0.0:31313", "_cortex_gateway_config_dir": str(out),
                "cortex_gateway_neurons": [{"name": "n1", "endpoint": "http://10.1.2.3:13131"}],
                "_cortex_neuron_config": "/etc/helexa/neuron.toml",
                "_cortex_neuron_llama_probe": {"cuda_lib": "", "nvidia_modprobe": ""},
                "ansible_python_interpreter": "{{ ansible_playbook_python }}", **CASES[case]}
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(settings))
    ansible.playbook("localhost,", str(play), "-e", f"@{extra}")
    for exe, name in (("neuron", "neuron.toml"), ("cortex", "cortex.toml")):
        r = subprocess.run([str(BIN / exe), "check-config", str(out / name)],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, (name, r.stdout + r.stderr)
    for unit in ("helexa-neuron.service", "helexa-cortex.service"):
        for line in (out / unit).read_text().splitlines():
            if not line.strip() or line.startswith(("#", "[")):
                continue
            key, value = line.split("=", 1) if "=" in line else (line, "")
            assert re.fullmatch(r"[A-Z][A-Za-z]+", key), (unit, line)
            if key in PATHS:
                assert all(re.fullmatch(r"-?/[^=]*", p) for p in value.split()), (unit, line)
