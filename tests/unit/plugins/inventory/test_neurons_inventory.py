"""helexa.cortex.neurons against real neurons and a real gateway on loopback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cortex.testing.fleet import ADMIN_KEY, TOKEN
from cortex.testing.waiting import wait_for


@pytest.fixture(scope="module")
def fleet(fleet_factory):
    """n1 (CPU, tiny model loaded), n2 (a stand-in H100, drained), n3 (killed)."""
    f = fleet_factory(n_ctx=2048)
    n1, n3 = f.neuron("n1"), f.neuron("n3")
    n2 = f.neuron("n2", fake_gpu="NVIDIA H100 80GB HBM3")
    n1.call("POST", "/models/load", {"model_id": "file:tiny-hello"})
    n2.call("POST", "/drain", {"drained": True})
    gw = f.gateway({"alpha": n1, "beta": n2, "gamma": n3})
    n3.close()
    wait_for(lambda: not gw.gw.fleet.nodes["gamma"].healthy
             and gw.gw.fleet.nodes["beta"].drained, "the gateway to see gamma down", 30)
    return {"n1": n1, "n2": n2, "n3": n3, "gw": gw}


def write(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def hostvars(inv: dict, host: str) -> dict:
    return inv["_meta"]["hostvars"][host]


def members(inv: dict, group: str) -> set[str]:
    return set(inv.get(group, {}).get("hosts", []))


def test_gateway_source_groups_and_vars(fleet, tmp_path, ansible):
    cfg = write(tmp_path / "fleet.neurons.yml", f"""\
        plugin: helexa.cortex.neurons
        gateway_url: {fleet['gw'].url}
        gateway_admin_key: "{{{{ '{ADMIN_KEY[:5]}' ~ '{ADMIN_KEY[5:]}' }}}}"
        neuron_token: {TOKEN}
        neuron_token_hosts: [127.0.0.1]
        timeout: 2
        """)
    inv = ansible.inventory_list(cfg)  # the admin key is a template, as a vault/env lookup would be
    assert members(inv, "neurons") == {"alpha", "beta", "gamma"}
    assert members(inv, "neuron_healthy") == {"alpha", "beta"}
    assert members(inv, "neuron_unhealthy") == {"gamma"}
    assert members(inv, "neuron_drained") == {"beta"}
    assert members(inv, "model_file_tiny_hello") == {"alpha"}
    assert members(inv, "gpu_nvidia_h100_80gb_hbm3") == {"beta"}

    alpha = hostvars(inv, "alpha")
    assert alpha["ansible_host"] == "127.0.0.1"
    assert alpha["cortex_endpoint"] == fleet["n1"].url
    assert alpha["cortex_healthy"] is True and alpha["cortex_drained"] is False
    assert alpha["cortex_activation_state"] == "ready"
    assert alpha["cortex_model_ids"] == ["file:tiny-hello"]
    assert alpha["cortex_gpu_count"] == 0
    assert alpha["cortex_vram_total_mb"] > 0 and alpha["cortex_devices"][0]["kind"] == "cpu"
    beta = hostvars(inv, "beta")
    assert beta["cortex_gpu_count"] == 1 and beta["cortex_vram_total_mb"] == 81559
    assert beta["cortex_devices"][0]["name"] == "NVIDIA H100 80GB HBM3"
    gamma = hostvars(inv, "gamma")
    assert gamma["cortex_healthy"] is False and gamma["cortex_reachable"] is False
    assert gamma["cortex_status"] == "unreachable" and gamma["cortex_error"]
    # secrets never reach the inventory
    assert TOKEN not in str(inv) and ADMIN_KEY not in str(inv)
    # what the agents said is marked unsafe: never templated
    raw = ansible.inventory_list(cfg, raw=True)["_meta"]["hostvars"]["alpha"]
    assert raw["cortex_model_ids"] == [{"__ansible_unsafe": "file:tiny-hello"}]
    assert raw["cortex_devices"][0]["name"] == {"__ansible_unsafe": "cpu"}


def test_endpoint_list_compose_groups_keyed_groups(fleet, tmp_path, ansible):
    cfg = write(tmp_path / "neurons.yml", f"""\
        plugin: helexa.cortex.neurons
        neurons:
          - {fleet['n1'].url}
          - name: big
            url: {fleet['n2'].url}
          - {fleet['n3'].url}
        neuron_token: {TOKEN}
        timeout: 2
        compose:
          vram_free_gb: cortex_vram_free_mb // 1024
          first_model: cortex_model_ids | first | default('none')
        groups:
          idle: cortex_healthy and cortex_model_ids | length == 0
        keyed_groups:
          - key: cortex_activation_state
            prefix: activation
          - key: cortex_gpu_count | string
            prefix: gpus
        """)
    inv = ansible.inventory_list(cfg)
    hosts = members(inv, "neurons")
    assert "big" in hosts and len(hosts) == 3
    # unnamed neurons take the /discovery hostname (made unique with the port) ...
    named = {h for h in hosts if h != "big" and hostvars(inv, h)["cortex_reachable"]}
    assert len(named) == 1
    alpha = named.pop()
    assert hostvars(inv, alpha)["cortex_hostname"] in alpha
    # ... and an unreachable one the URL's host
    (down,) = members(inv, "neuron_unhealthy")
    assert down.startswith("127.0.0.1")
    assert hostvars(inv, down)["cortex_endpoint"] == fleet["n3"].url
    assert hostvars(inv, alpha)["first_model"] == "file:tiny-hello"
    assert hostvars(inv, "big")["vram_free_gb"] == 80535 // 1024
    assert members(inv, "idle") == {"big"}
    assert members(inv, "activation_ready") == {alpha, "big"}
    assert members(inv, "gpus_1") == {"big"} and alpha in members(inv, "gpus_0")
    assert members(inv, "neuron_drained") == {"big"}


def test_strict_surfaces_compose_errors(fleet, tmp_path, ansible):
    cfg = write(tmp_path / "x.neurons.yml", f"""\
        plugin: helexa.cortex.neurons
        neurons: [{fleet['n1'].url}]
        neuron_token: {TOKEN}
        strict: true
        compose:
          broken: cortex_no_such_var + 1
        """)
    r = ansible.run(["ansible-inventory", "-i", str(cfg), "--list"])
    assert "cortex_no_such_var" in r.stdout + r.stderr


def test_cache_serves_the_last_view(fleet, tmp_path, ansible):
    cache_dir = tmp_path / "cache"
    cfg = write(tmp_path / "cached.neurons.yml", f"""\
        plugin: helexa.cortex.neurons
        neurons: [{{name: n2, url: {fleet['n2'].url}}}]
        neuron_token: {TOKEN}
        cache: true
        cache_plugin: ansible.builtin.jsonfile
        cache_connection: {cache_dir}
        cache_timeout: 3600
        """)
    first = ansible.inventory_list(cfg)
    assert members(first, "neuron_drained") == {"n2"}
    assert any(cache_dir.iterdir())
    fleet["n2"].call("POST", "/drain", {"drained": False})
    try:
        cached = ansible.inventory_list(cfg)
        assert members(cached, "neuron_drained") == {"n2"}  # from the cache
        r = ansible.run(["ansible-inventory", "-i", str(cfg), "--list", "--flush-cache"])
        assert r.returncode == 0, r.stderr
        import json
        assert members(json.loads(r.stdout), "neuron_drained") == set()
    finally:
        fleet["n2"].call("POST", "/drain", {"drained": True})


def test_wrong_file_name_is_not_ours(fleet, tmp_path, ansible):
    cfg = write(tmp_path / "fleet.yml", f"""\
        plugin: helexa.cortex.neurons
        neurons: [{fleet['n1'].url}]
        """)
    r = ansible.run(["ansible-inventory", "-i", str(cfg), "--list"])
    assert "alpha" not in r.stdout
    assert '"neurons"' not in r.stdout
