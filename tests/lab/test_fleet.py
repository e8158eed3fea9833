"""site.yml on the lab: a working fleet, idempotent, truthful in check mode, hardened."""

from __future__ import annotations

import re
from pathlib import Path

import requests
from openai import OpenAI

from conftest import CLIENT_KEY, GATEWAY, changed_tasks, lab, playbook, recap


def test_site_converges_and_second_run_changes_nothing(fleet):
    first = recap(fleet.stdout)
    assert set(first) == {"neuron1", "neuron2", "gateway1"}
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in first.values())
    out = playbook("site.yml").stdout
    again = recap(out)
    assert {h: r["changed"] for h, r in again.items()} == {h: 0 for h in again}, \
        changed_tasks(out)


def test_check_mode_with_diff_reports_no_change(fleet):
    out = playbook("site.yml", "--check", "--diff").stdout
    assert {h: r["changed"] for h, r in recap(out).items()} == {h: 0 for h in recap(out)}, \
        changed_tasks(out)


def test_one_phase_alone_changes_nothing(fleet):
    """--tags service renders the units as a whole run does (the backend decision runs too)."""
    out = playbook("site.yml", "--tags", "service").stdout
    assert {h: r["changed"] for h, r in recap(out).items()} == {h: 0 for h in recap(out)}, \
        changed_tasks(out)


def test_gateway_answers_through_the_fleet(fleet):
    client = OpenAI(base_url=f"{GATEWAY}/v1", api_key=CLIENT_KEY, timeout=120)
    assert {"smollm2", "gpt-4o-mini"} <= {m.id for m in client.models.list()}
    r = client.chat.completions.create(
        model="gpt-4o-mini", temperature=0, max_tokens=48,
        messages=[{"role": "system", "content": "Answer in English."},
                  {"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in r.choices[0].message.content


def test_secure_by_default(fleet):
    """The lab inventory sets no neuron token: the roles generated one on the controller, the
    neurons refuse calls without it and listen on their private address only, the gateway
    wants a client key, and no run printed the token."""
    token_file = Path("~/.cache/helexa-cortex/secrets/neuron-token").expanduser()
    assert token_file.stat().st_mode & 0o077 == 0
    token = token_file.read_text().strip()
    assert len(token) >= 16
    neuron = "http://10.213.0.11:13131"
    assert requests.get(f"{neuron}/models", timeout=10).status_code == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{neuron}/models", headers=bearer, timeout=10).status_code == 200
    assert requests.get(f"{GATEWAY}/v1/models", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer not-a-key"}
    assert requests.get(f"{GATEWAY}/v1/models", headers=wrong, timeout=10).status_code == 401
    for host, address in (("neuron1", "10.213.0.11"), ("neuron2", "10.213.0.12")):
        ports = [line.split()[3] for line in lab("exec", host, "ss", "-ltnH").stdout.splitlines()]
        assert f"{address}:13131" in ports, (host, ports)
        assert not {"0.0.0.0:13131", "*:13131", "[::]:13131"} & set(ports), (host, ports)
    assert token not in fleet.stdout + fleet.stderr


def _show(host: str, unit: str, *props: str) -> dict[str, str]:
    out = lab("exec", host, "systemctl", "show", unit, *[f"-p{p}" for p in props]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_units_run_hardened_as_the_service_user(fleet):
    for host, unit, user in (("neuron1", "helexa-neuron", "cortex-neuron"),
                             ("neuron2", "helexa-neuron", "cortex-neuron"),
                             ("gateway1", "helexa-cortex", "cortex-gateway")):
        p = _show(host, unit, "ActiveState", "User", "NoNewPrivileges", "ProtectSystem",
                  "ProtectHome", "PrivateTmp", "Restart", "Type", "ReadWritePaths")
        assert p["ActiveState"] == "active", (host, p)
        assert p["User"] == user and p["NoNewPrivileges"] == "yes"
        assert p["ProtectSystem"] == "strict" and p["ProtectHome"] == "yes"
        assert p["PrivateTmp"] == "yes" and p["Restart"] == "on-failure"
        assert p["Type"] == "notify" and p["ReadWritePaths"]


# systemd-analyze security's exposure score of each unit as deployed (0 = locked down, 10 =
# none): 3.3 (neuron) and 3.2 (gateway) before the hardening of issue 12, 1.2 (a CPU neuron)
# and 1.1 after; the bar keeps them there. (What is left: network access, which is their job.)
EXPOSURE_BAR = {"helexa-neuron": 1.2, "helexa-cortex": 1.1}


def test_units_exposure_stays_under_the_bar(fleet):
    scores = {}
    for host, unit in (("neuron1", "helexa-neuron"), ("gateway1", "helexa-cortex")):
        out = lab("exec", host, "systemd-analyze", "security", "--no-pager", f"{unit}.service",
                  check=False).stdout
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        assert m, out[-2000:]
        scores[unit] = float(m.group(1))
    print("systemd-analyze security:", ", ".join(f"{u} {s}" for u, s in scores.items()))
    assert all(scores[u] <= limit for u, limit in EXPOSURE_BAR.items()), (scores, EXPOSURE_BAR)


def test_files_users_and_ports(fleet):
    for host, user in (("neuron1", "cortex-neuron"), ("gateway1", "cortex-gateway")):
        shell = lab("exec", host, "getent", "passwd", user).stdout
        assert shell.strip().endswith("/usr/sbin/nologin"), (host, shell)
    mode = lab("exec", "neuron1", "stat", "-c", "%a %U %G", "/etc/helexa/neuron.toml").stdout
    assert mode.split() == ["640", "root", "cortex-neuron"]
    for path, want in (("/etc/cortex", "750 root cortex-gateway"),
                       ("/etc/cortex/cortex.toml", "640 root cortex-gateway"),
                       ("/var/lib/helexa/gateway", "750 cortex-gateway cortex-gateway")):
        assert lab("exec", "gateway1", "stat", "-c", "%a %U %G", path).stdout.split() == \
            want.split(), path
    # Nobody but root and the gateway's group reads its keys (the neurons' user is another).
    assert lab("exec", "gateway1", "runuser", "-u", "nobody", "--", "cat",
               "/etc/cortex/cortex.toml", check=False).returncode != 0
    groups = lab("exec", "neuron1", "id", "-nG", "cortex-neuron").stdout.split()
    assert groups == ["cortex-neuron"], groups
    listening = lab("exec", "gateway1", "ss", "-ltnH").stdout
    assert ":31313" in listening and ":31314" in listening
    assert ":13131" in lab("exec", "neuron2", "ss", "-ltnH").stdout


def test_rolling_restart_under_load_drops_no_request(fleet):
    """playbooks/rolling_restart.yml restarts both neurons one at a time while clients keep
    asking through the gateway: every request is answered (they move to the other neuron)."""
    import threading

    playbook("site.yml", "-e", "@tests/lab/two_replicas.yml")
    stop = threading.Event()
    results: list[str] = []

    def ask(stream: bool, key: str) -> None:
        client = OpenAI(base_url=f"{GATEWAY}/v1", api_key=key, timeout=120, max_retries=0)
        while not stop.is_set():
            try:
                r = client.chat.completions.create(
                    model="gpt-4o-mini", max_tokens=8, stream=stream,
                    messages=[{"role": "user", "content": "Say hello."}])
                if stream:
                    assert list(r)
                results.append("ok")
            except Exception as exc:  # any failure a client would see
                results.append(repr(exc))

    # three accounts (tests/lab/two_replicas.yml): one account may hold 2 requests per model
    clients = [threading.Thread(target=ask, args=(stream, key)) for stream, key in
               ((False, CLIENT_KEY), (False, "lab-load-key-1"), (True, "lab-load-key-2"))]
    for t in clients:
        t.start()
    try:
        out = playbook("playbooks/rolling_restart.yml").stdout
    finally:
        stop.set()
        for t in clients:
            t.join()
        playbook("site.yml")  # back to the demo's layout
    assert recap(out)["neuron1"]["failed"] == 0 and recap(out)["neuron2"]["failed"] == 0
    failures = [r for r in results if r != "ok"]
    assert len(results) >= 20 and failures == [], (len(results), failures[:5])
