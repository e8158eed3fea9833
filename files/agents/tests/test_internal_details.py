"""Clients see that something failed, not the fleet's insides: neuron addresses, file paths
and hub errors go to the log and to admins only."""

from __future__ import annotations

import requests

from cortex.gateway.config import EntitlementsSection, KeyEntry, ModelEntry
from cortex.testing.served import Served
from cortex.testing.waiting import wait_for

ADMIN, KEY = "sk-admin-details", "sk-client-details"


def test_health_and_the_dashboard_keep_the_details_for_admins(neuron_factory,
                                                               gateway_factory, tmp_path):
    # A pre-warm that fails names the missing file's path; a node that cannot be polled
    # names its address. Before, the public /health and every dashboard viewer got both.
    n = neuron_factory(default_models=["file:no-such-model"])
    dead = Served(lambda environ, start_response: [])  # a port nobody answers properly on
    dead.close()
    gw = gateway_factory({"n1": n, "gone": dead}, [ModelEntry(id="tiny-hello")],
                         admin_keys=[ADMIN], entitlements=EntitlementsSection(
                             require_auth=True, keys=[KeyEntry(key=KEY, account_id="a")]))

    def health(key: str = "") -> dict:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.get(gw.url + "/health", headers=headers, timeout=10).json()

    wait_for(lambda: any(u["reason"] == "prewarm_failed" for u in health()["unservable"]),
             "the pre-warm failure", 30)
    public = health()
    assert all("detail" not in u for u in public["unservable"])
    assert str(n.neuron.cfg.models_dir) not in str(public)
    detailed = [u for u in health(ADMIN)["unservable"] if u["reason"] == "prewarm_failed"]
    assert detailed and "no-such-model" in detailed[0]["detail"]

    def node(key: str) -> dict:
        state = requests.get(gw.url + "/ui/api/state", timeout=10,
                             headers={"Authorization": f"Bearer {key}"}).json()["state"]
        return {x["name"]: x for x in state["nodes"]}["gone"]

    wait_for(lambda: node(ADMIN)["last_error"], "the failed poll", 30)
    assert dead.url.split("//")[1] not in str(node(KEY))
    assert node(KEY)["last_error"] and "admins" in node(KEY)["last_error"]
    client_state = requests.get(gw.url + "/ui/api/state", timeout=10,
                                headers={"Authorization": f"Bearer {KEY}"}).text
    assert dead.url.split("//")[1] not in client_state
    assert str(n.neuron.cfg.models_dir) not in client_state


def test_a_failed_cold_load_names_the_model_not_the_neurons_files(neuron_factory,
                                                                  gateway_factory, models_dir,
                                                                  tmp_path, caplog):
    broken_dir = tmp_path / "models-broken"
    broken_dir.mkdir()
    data = (models_dir / "tiny-hello.gguf").read_bytes()
    (broken_dir / "tiny-broken.gguf").write_bytes(data[:len(data) * 9 // 10])
    n = neuron_factory(models_dir=broken_dir)
    direct = n.post("/models/load", {"model_id": "file:tiny-broken"})
    words = direct.json()["error"]["detail"]  # the neuron's own (a file name, its sizes)
    assert direct.status_code >= 400 and "tiny-broken.gguf" in words
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-broken")])
    r = gw.chat("tiny-broken")
    assert r.status_code == direct.status_code, r.text
    err = r.json()["error"]
    assert err["code"] == direct.json()["error"].get("code", err["code"])
    assert "tiny-broken" in err["message"] and "n1" in err["message"]
    assert words not in r.text and "detail" not in err and str(tmp_path) not in r.text
    assert words in caplog.text  # for the operator, in the log


def test_a_neuron_gone_before_a_request_is_named_not_its_address(neuron_factory,
                                                                 gateway_factory, caplog):
    # Issue 19 item 9, the relay's 502. Before: "could not reach a neuron for tiny-hello:
    # cannot connect to 127.0.0.1:33657: [Errno 111] Connection refused".
    n = neuron_factory()
    n.load("file:tiny-hello")
    gw = gateway_factory({"n1": n}, [ModelEntry(id="tiny-hello")], poll_interval_secs=3600)
    assert gw.chat("tiny-hello").status_code == 200
    address = n.url.removeprefix("http://")
    n.close()  # the gateway's last poll still has it loaded there
    r = gw.chat("tiny-hello")
    err = r.json()["error"]
    assert r.status_code == 502 and err["code"] == "upstream_connection_error", r.text
    assert "n1" in err["message"] and "tiny-hello" in err["message"]
    assert address not in r.text and "127.0.0.1" not in r.text and "Errno" not in r.text
    assert address in caplog.text  # for the operator, in the log
