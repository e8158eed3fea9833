"""What helexa.cortex.neurons trusts of a gateway's node list, against a real gateway.

The gateway lists a real neuron, an endpoint that records every request it gets (what
whoever can change the gateway's node list would add to collect the neuron token), and a node
whose name and host are template syntax. The token must reach only the endpoints the user
allowed, and nothing the gateway said may be templated on the controller.
"""

from __future__ import annotations

import json
import textwrap
from types import SimpleNamespace

import pytest
from flask import Flask, jsonify, request

from cortex.testing.ansible_cli import plain
from cortex.testing.fleet import ADMIN_KEY, TOKEN
from cortex.testing.served import Served

HOSTILE_HOST = "{{7*7}}.invalid"
HOSTILE_NAME = "{{ 7*7 }}"


def recorder():
    """An HTTP endpoint that answers like a neuron and keeps each request's Authorization."""
    app = Flask("recorder")
    app.seen = []

    @app.route("/<path:path>")
    def anything(path):
        # The gateway polls it too (with its own token, as configured): keep the plugin's calls.
        if request.headers.get("User-Agent") == "helexa.cortex-ansible":
            app.seen.append((path, request.headers.get("Authorization")))
        if path == "health":
            return jsonify(status="ok", devices=[], models=[], activation={"state": "ready"})
        if path == "models":
            return jsonify([])
        return jsonify(hostname="rogue", devices=[])

    return app


@pytest.fixture(scope="module")
def fleet(fleet_factory):
    f = fleet_factory(n_ctx=2048)
    n1 = f.neuron("n1")
    rogue = Served(recorder())
    hostile = SimpleNamespace(url=f"http://{HOSTILE_HOST}:13131")
    gw = f.gateway({"alpha": n1, "rogue": rogue, HOSTILE_NAME: hostile})
    f.wait_healthy("alpha")
    yield {"n1": n1, "rogue": rogue, "gw": gw}
    rogue.close()


def source(tmp_path, fleet, extra=""):
    cfg = tmp_path / "fleet.neurons.yml"
    cfg.write_text(textwrap.dedent(f"""\
        plugin: helexa.cortex.neurons
        gateway_url: {fleet['gw'].url}
        gateway_admin_key: {ADMIN_KEY}
        neuron_token: {TOKEN}
        timeout: 2
        """) + textwrap.dedent(extra))
    return cfg


def tokens_seen(rogue):
    return [auth for _path, auth in rogue.app.seen if auth]


def test_token_goes_only_to_the_allowed_endpoints(fleet, tmp_path, ansible):
    port = fleet["n1"].port
    cfg = source(tmp_path, fleet, f"neuron_token_hosts: ['127.0.0.1:{port}']\n")
    fleet["rogue"].app.seen.clear()
    r = ansible.run(["ansible-inventory", "-i", str(cfg), "--list"])
    assert r.returncode == 0, r.stderr[-3000:]
    # the rogue endpoint was read (its public /health) but never saw the token ...
    assert ("health", None) in fleet["rogue"].app.seen
    assert tokens_seen(fleet["rogue"]) == []
    assert "the neuron token was not sent to" in r.stderr and fleet["rogue"].url in r.stderr
    # ... while the allowed neuron got it: /discovery (token only) answered
    hv = plain(json.loads(r.stdout))["_meta"]["hostvars"]
    assert hv["alpha"]["cortex_hostname"] and "cortex_error" not in hv["alpha"]
    assert hv["rogue"]["cortex_hostname"] is None  # no /discovery without the token


def test_by_default_no_gateway_listed_endpoint_gets_the_token(fleet, tmp_path, ansible):
    cfg = source(tmp_path, fleet)
    fleet["rogue"].app.seen.clear()
    r = ansible.run(["ansible-inventory", "-i", str(cfg), "--list"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert tokens_seen(fleet["rogue"]) == []
    assert fleet["n1"].url in r.stderr  # alpha was read without the token too, and named


def test_a_network_allows_every_neuron_on_it(fleet, tmp_path, ansible):
    cfg = source(tmp_path, fleet, "neuron_token_hosts: [127.0.0.0/8]\n")
    fleet["rogue"].app.seen.clear()
    r = ansible.run(["ansible-inventory", "-i", str(cfg), "--list"])
    assert r.returncode == 0, r.stderr[-3000:]
    seen = fleet["rogue"].app.seen
    assert {path for path, _auth in seen} == {"health", "discovery"}
    assert tokens_seen(fleet["rogue"]) == [f"Bearer {TOKEN}"] * len(seen)


def test_gateway_data_is_never_templated(fleet, tmp_path, ansible):
    # (a pattern can never admit a host name that is not plain DNS, such as this one)
    cfg = source(tmp_path, fleet, "neuron_token_hosts: [127.0.0.1, '*']\n")
    r = ansible.run(["ansible-inventory", "-i", str(cfg), "--list"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"not sent to http://{HOSTILE_HOST}:13131" in r.stderr
    hosts = json.loads(r.stdout)["_meta"]["hostvars"]
    # the template-syntax node name became a plain host name; its host is marked unsafe
    (odd,) = [h for h in hosts if h not in ("alpha", "rogue")]
    assert "{" not in odd and "}" not in odd and " " not in odd
    assert hosts[odd]["ansible_host"] == {"__ansible_unsafe": HOSTILE_HOST}
    assert hosts["alpha"]["ansible_host"] == {"__ansible_unsafe": "127.0.0.1"}
    assert hosts[odd]["cortex_gateway_node"] == {"__ansible_unsafe": HOSTILE_NAME}
    # and a play that prints them shows the text, not 49
    play = tmp_path / "show.yml"
    play.write_text(textwrap.dedent("""\
        - hosts: neurons
          gather_facts: false
          connection: local
          tasks:
            - ansible.builtin.debug:
                msg: "host={{ ansible_host }} node={{ cortex_gateway_node | default('') }}"
        """))
    r = ansible.run(["ansible-playbook", "-i", str(cfg), str(play),
                     "-e", "ansible_python_interpreter={{ ansible_playbook_python }}"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"host={HOSTILE_HOST} node={HOSTILE_NAME}" in r.stdout, r.stdout[-3000:]
    assert "49" not in r.stdout.replace("127.0.0.1", "")
