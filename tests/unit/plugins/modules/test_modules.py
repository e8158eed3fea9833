"""The modules run for real (ansible-playbook / ansible ad-hoc on localhost) against a
neuron and a gateway served on 127.0.0.1 by tests/unit/conftest.py."""

from __future__ import annotations

import json


def _loaded(neuron) -> list[str]:
    return sorted(m.id for m in neuron.app.extensions["neuron"].registry.models.values())


def test_neuron_model_load_unload_idempotent_with_diff(neuron, playbook):
    tasks = """\
- name: load
  helexa.cortex.neuron_model: {url: "{{ u }}", token: "{{ t }}", name: file:tiny-hello}
- name: load again
  helexa.cortex.neuron_model: {url: "{{ u }}", token: "{{ t }}", name: file:tiny-hello}
- name: unload
  helexa.cortex.neuron_model: {url: "{{ u }}", token: "{{ t }}",
                              name: file:tiny-hello, state: absent}
- name: unload again
  helexa.cortex.neuron_model: {url: "{{ u }}", token: "{{ t }}",
                              name: file:tiny-hello, state: absent}
"""
    r = playbook(tasks, "--diff", vars={"u": neuron.url, "t": neuron.token})
    assert [x["changed"] for x in r] == [True, False, True, False]
    assert r[0]["model"]["status"] == "loaded" and r[0]["loaded"] == ["file:tiny-hello"]
    assert r[0]["diff"] == {"before": {"loaded": []}, "after": {"loaded": ["file:tiny-hello"]}}
    assert r[2]["diff"] == {"before": {"loaded": ["file:tiny-hello"]}, "after": {"loaded": []}}
    assert r[3]["model"]["status"] == "available"
    assert "neuron-secret" not in json.dumps(r)  # the token is no_log
    assert _loaded(neuron) == []


def test_neuron_model_check_mode_changes_nothing(neuron, playbook):
    tasks = """\
- name: load in check mode
  helexa.cortex.neuron_model: {url: "{{ u }}", token: "{{ t }}", name: file:tiny-hello}
"""
    r = playbook(tasks, "--check", "--diff", vars={"u": neuron.url, "t": neuron.token})
    assert r[0]["changed"] is True
    assert r[0]["diff"]["after"] == {"loaded": ["file:tiny-hello"]}
    assert _loaded(neuron) == []


def test_neuron_model_quant_and_reload(neuron, playbook):
    tasks = """\
- name: load F16
  helexa.cortex.neuron_model: {url: "{{ u }}", token: "{{ t }}", name: file:tiny-quants, quant: F16}
- name: same quant, other case
  helexa.cortex.neuron_model: {url: "{{ u }}", token: "{{ t }}", name: file:tiny-quants, quant: f16}
- name: switch to Q8_0
  helexa.cortex.neuron_model: {url: "{{ u }}", token: "{{ t }}",
                              name: file:tiny-quants, quant: Q8_0}
"""
    r = playbook(tasks, vars={"u": neuron.url, "t": neuron.token})
    assert [x["changed"] for x in r] == [True, False, True]
    assert r[2]["model"]["quant"] == "Q8_0" and "F16" in r[2]["reload_reason"]


def test_neuron_model_preflight_failure(neuron, playbook):
    tasks = """\
- name: bad quant
  helexa.cortex.neuron_model: {url: "{{ u }}", token: "{{ t }}", name: file:tiny-quants, quant: q80}
"""
    r = playbook(tasks, vars={"u": neuron.url, "t": neuron.token}, rc=2)
    assert r[0]["failed"] is True
    assert r[0]["kind"] == "quant_not_found" and r[0]["nearest"] == "Q8_0"
    assert r[0]["status"] == 422
    assert "quant_not_found" in r[0]["msg"] and "Q8_0" in r[0]["msg"]


def test_module_defaults_group(neuron, playbook):
    tasks = """\
- name: with group defaults
  module_defaults:
    group/helexa.cortex.neuron: {url: "{{ u }}", token: "{{ t }}"}
  block:
    - name: load
      helexa.cortex.neuron_model: {name: file:tiny-hello}
    - name: info
      helexa.cortex.neuron_info:
"""
    r = playbook(tasks, vars={"u": neuron.url, "t": neuron.token})
    assert r[0]["changed"] is True
    assert r[1]["changed"] is False and r[1]["loaded"] == ["file:tiny-hello"]
    assert r[1]["activation"]["state"] and r[1]["discovery"]["devices"]
    assert r[1]["health"]["status"] == "ok" and r[1]["drained"] is False


def test_adhoc(neuron, adhoc):
    args = f"url={neuron.url} token={neuron.token} name=file:tiny-hello"
    rc, r = adhoc("helexa.cortex.neuron_model", args)
    assert rc == 0 and r["changed"] is True
    rc, r = adhoc("helexa.cortex.neuron_model", args)
    assert rc == 0 and r["changed"] is False
    rc, r = adhoc("helexa.cortex.neuron_model", f"url={neuron.url} name=file:tiny-hello")
    assert rc == 2 and r["status"] == 401  # no token


def test_gateway_modules(neuron, gateway, playbook):
    tasks = """\
- name: info without admin
  helexa.cortex.gateway_info: {url: "{{ g }}"}
- name: info with admin
  helexa.cortex.gateway_info: {url: "{{ g }}", admin_token: "{{ a }}"}
- name: drain (check)
  helexa.cortex.gateway_node: {url: "{{ g }}", token: "{{ a }}", name: n1}
  check_mode: true
- name: drain
  helexa.cortex.gateway_node: {url: "{{ g }}", token: "{{ a }}", name: n1, wait_timeout: 10}
- name: drain again
  helexa.cortex.gateway_node: {url: "{{ g }}", token: "{{ a }}", name: n1}
- name: undrain
  module_defaults:
    group/helexa.cortex.gateway: {url: "{{ g }}", token: "{{ a }}"}
  helexa.cortex.gateway_node: {name: n1, state: active}
- name: unknown node
  helexa.cortex.gateway_node: {url: "{{ g }}", token: "{{ a }}", name: nope}
  ignore_errors: true
"""
    r = playbook(tasks, "--diff", vars={"g": gateway.url, "a": gateway.token})
    assert r[0]["changed"] is False and r[0]["health"]["nodes"]["total"] == 1
    assert "nodes" not in r[0]
    assert [n["name"] for n in r[1]["nodes"]] == ["n1"]
    assert r[2]["changed"] is True and r[2]["drained"] is True
    assert r[3]["changed"] is True and r[3]["drained"] is True and r[3]["in_flight"] == 0
    assert r[3]["diff"] == {"before": {"drained": False}, "after": {"drained": True}}
    assert r[4]["changed"] is False
    assert r[5]["changed"] is True and r[5]["drained"] is False
    assert r[6]["failed"] is True and "nope" in r[6]["msg"]
    assert neuron.app.extensions["neuron"].drained is False
