"""`cortex serve` for real: gunicorn + gevent workers, metrics port, the `cortex` CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from cortex.core.config import ConfigError
from cortex.gateway import config as gw_config
from cortex.testing import tomlfile
from cortex.testing.served import Served
from cortex.testing.tiny_gguf import SCRIPT_HELLO, script_text
from cortex.testing.waiting import wait_for

BIN = Path(sys.executable).parent


MODELS = {"models": [{"id": "tiny-hello"}], "aliases": {"gpt-4o-mini": "tiny-hello"}}


@pytest.fixture
def served_gateway(neuron_process, gateway_process):
    """`cortex serve` with two gevent workers over a `neuron serve` (node n1)."""
    return gateway_process({"n1": neuron_process()}, MODELS, admin_keys=["adm"],
                           gateway={"poll_interval_secs": 0.5})


def test_gunicorn_gevent_gateway_end_to_end(served_gateway):
    client = OpenAI(base_url=served_gateway.url + "/v1", api_key="x")
    for _ in range(4):  # spread over both workers
        r = client.chat.completions.create(model="gpt-4o-mini", temperature=0,
                                           messages=[{"role": "user", "content": "Hi"}])
        assert r.choices[0].message.content == script_text(SCRIPT_HELLO)
    # Workers add their requests to the shared metrics once a second (metrics.Buffer).
    want = ['cortex_requests_total{model="tiny-hello",node="n1"} 4.0',
            'cortex_cold_starts_total{model="tiny-hello",node="n1"} 1.0',
            'cortex_node_up{node="n1"} 1.0']
    wait_for(lambda: all(line in served_gateway.metrics() for line in want),
             "the requests in the metrics", 10)
    # Each worker stops its copy of the master's metrics server and poller without a
    # traceback (gevent forks the master's greenlets too).
    assert "Traceback" not in served_gateway.log.read_text()


def test_replies_with_and_without_a_body_on_one_keep_alive_connection(served_gateway):
    # The gateway's worker sends a reply's head with its body; bodiless replies (HEAD, a
    # 404 error, a stream's chunked end) must still be whole and keep the connection usable.
    base = served_gateway.url
    s = requests.Session()
    head = s.head(base + "/health", timeout=10)
    assert head.status_code == 200 and head.headers["Connection"] == "keep-alive"
    assert s.get(base + "/health", timeout=10).json()["nodes"]["healthy"] == 1
    missing = s.get(base + "/nowhere", timeout=10)
    assert missing.json()["error"]["code"] == "not_found"
    assert missing.headers["Connection"] == "keep-alive"
    body = {"model": "tiny-hello", "messages": [{"role": "user", "content": "Hi"}],
            "stream": True}
    with s.post(base + "/v1/chat/completions", json=body, stream=True, timeout=60) as r:
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert r.text.rstrip().endswith("data: [DONE]")
    r = s.post(base + "/v1/chat/completions", json=dict(body, stream=False), timeout=60)
    assert r.json()["choices"][0]["message"]["content"] == script_text(SCRIPT_HELLO)


def test_cortex_cli_status_models_drain(served_gateway):
    base = served_gateway.url
    requests.post(base + "/v1/chat/completions", timeout=30, json={
        "model": "tiny-hello", "messages": [{"role": "user", "content": "Hi"}]})

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "cortex"), *args, "--url", base, "--admin-key", "adm"],
                              capture_output=True, text=True, timeout=60)

    # Each gunicorn worker polls on its own: wait until the one we reach has seen the load.
    def seen_the_load() -> str:
        out = cli("status").stdout
        return out if "file:tiny-hello (loaded)" in out else ""

    out = wait_for(seen_the_load, "a worker that has seen the load", 10)
    assert "1/1 nodes healthy" in out and "n1" in out and "file:tiny-hello (loaded)" in out
    data = json.loads(cli("status", "--json").stdout)
    assert data["nodes"][0]["name"] == "n1"
    assert "tiny-hello" in cli("models").stdout
    assert "n1: drained" in cli("drain", "n1").stdout
    assert "DRAINED" in cli("status").stdout.upper()
    assert "n1: active" in cli("undrain", "n1").stdout
    bad = subprocess.run([str(BIN / "cortex"), "status", "--url", base], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "CORTEX_ADMIN_KEY" in bad.stderr


@pytest.mark.parametrize("cortex_toml, models_toml, fragment", [
    ("[gateway]\nlisten = 5\n", "", "key 'gateway.listen': expected a string"),
    ("[eviction]\nstrategy = 'random'\n", "", "strategy must be 'lru' or 'priority'"),
    ("[[neurons]]\nname = 'a'\nendpoint = 'nope'\n", "", "endpoint must be http"),
    ("models_config = 'absent.toml'\n", None, "models_config file not found"),
    ("", "[[models]]\nidd = 'x'\n", "unknown key 'models[0].idd'"),
    ("", "[[models]]\nid = 'x'\n[aliases]\na = 'y'\n", "aliases are flat"),
    ("", "[[models]]\nid = 'x'\nvram_mb = 'big'\n", "models[0].vram_mb"),
    ("[entitlements]\n[[entitlements.keys]]\nkey = 'k'\naccount_id = 'a'\n"
     "window = {kind = 'monthly'}\n", "", "window kind must be"),
    ("[gateway]\nadmin_keys = ['']\n", "", "admin_keys[0] is empty"),
    ("[gateway]\nadmin_keys = ['a', '  ']\n", "", "admin_keys[1] is empty"),
    ("[entitlements]\n[[entitlements.keys]]\nkey = ''\naccount_id = 'a'\n", "",
     "key is empty"),
    ("[entitlements]\n[[entitlements.keys]]\nkey = 'k'\naccount_id = 'a'\n"
     "window = {kind = 'rolling', seconds = 0}\n", "", "0 < seconds <="),
    ("[entitlements]\n[[entitlements.keys]]\nkey = 'k'\naccount_id = 'a'\n"
     "window = {kind = 'rolling', seconds = 99999999}\n", "", "0 < seconds <="),
    ("[entitlements]\nstore = 'postgres://db'\n", "", "accepted forms"),
    ("[entitlements]\nstore = 'sqlite://relative.db'\n", "", "must be absolute"),
])
def test_bad_config_is_a_clear_error(tmp_path, cortex_toml, models_toml, fragment):
    if models_toml is not None:
        (tmp_path / "models.toml").write_text(models_toml)
        cortex_toml = 'models_config = "models.toml"\n' + cortex_toml
    (tmp_path / "cortex.toml").write_text(cortex_toml)
    with pytest.raises(ConfigError, match=None) as exc:
        gw_config.load(tmp_path / "cortex.toml")
    assert fragment in str(exc.value)
    r = subprocess.run([str(BIN / "cortex"), "check-config", str(tmp_path / "cortex.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and fragment in r.stderr


# Whether `cortex serve` starts with this cortex.toml: listening beyond loopback without
# require_auth, anyone on the network could use the models (issue 19 item 19).
KEYED = "[entitlements]\nrequire_auth = true\n[[entitlements.keys]]\nkey = 'k'\naccount_id = 'a'\n"


@pytest.mark.parametrize("cortex_toml, starts", [
    ("", False),  # the defaults: every interface, no keys
    ("[gateway]\nlisten = '10.0.0.5:31313'\n", False),
    ("[gateway]\nlisten = 'gw.lan:31313'\n", False),
    ("[gateway]\nlisten = '127.0.0.1:31313'\n", True),
    ("[gateway]\nlisten = '[::1]:31313'\n", True),
    ("[gateway]\nallow_insecure = true\n", True),
    (KEYED, True),
])
def test_a_gateway_open_to_its_network_needs_keys_or_says_so(tmp_path, cortex_toml, starts):
    (tmp_path / "models.toml").write_text("")
    (tmp_path / "cortex.toml").write_text('models_config = "models.toml"\n' + cortex_toml)
    if starts:
        gw_config.load(tmp_path / "cortex.toml")
        return
    with pytest.raises(ConfigError, match=r"reachable from other hosts.*require_auth.*"
                                          r"allow_insecure = true"):
        gw_config.load(tmp_path / "cortex.toml")
    r = subprocess.run([str(BIN / "cortex"), "serve", "--config", str(tmp_path / "cortex.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "reachable from other hosts" in r.stderr, r.stderr


def test_env_overrides(tmp_path, monkeypatch):
    (tmp_path / "models.toml").write_text("")
    (tmp_path / "cortex.toml").write_text('models_config = "models.toml"\n')
    monkeypatch.setenv("CORTEX_GATEWAY__LISTEN", "127.0.0.1:4000")
    monkeypatch.setenv("CORTEX_EVICTION__STRATEGY", "priority")
    cfg, _ = gw_config.load(tmp_path / "cortex.toml")
    assert cfg.gateway.listen == "127.0.0.1:4000" and cfg.eviction.strategy == "priority"


def test_original_cortex_config_loads_unchanged(tmp_path):
    (tmp_path / "models.toml").write_text('''
[[models]]
id = "Qwen/Qwen2.5-7B-Instruct-GGUF"
harness = "llama_cpp"
quant = "Q4_K_M"
vram_mb = 6000
min_devices = 1
min_device_vram_mb = 8000
pinned_on = ["gpu-a"]
cost = { input = 0.1, output = 0.2 }
capabilities = ["chat", "tool_call"]
limit = { context = 32768, output = 8192 }

[aliases]
"qwen" = "Qwen/Qwen2.5-7B-Instruct-GGUF"
''')
    (tmp_path / "cortex.toml").write_text('''
models_config = "models.toml"
[gateway]
listen = "0.0.0.0:31313"
metrics_listen = "0.0.0.0:31314"
[eviction]
strategy = "priority"
defrag_after_cycles = 0
[[neurons]]
name = "gpu-a"
endpoint = "http://10.0.0.5:13131"
[entitlements]
require_auth = true
[[entitlements.keys]]
key = "sk-test"
account_id = "acme"
hard_cap = 1000000
window = { kind = "rolling", seconds = 86400 }
''')
    cfg, models = gw_config.load(tmp_path / "cortex.toml")
    (m,) = models.models
    assert m.residency_priority == 1000 and m.load_id == "hf:Qwen/Qwen2.5-7B-Instruct-GGUF"
    assert cfg.entitlements.keys[0].window.seconds == 86400
    assert "sk-test" not in repr(cfg.entitlements.keys[0])


@pytest.mark.parametrize("cortex_toml, field", [
    ("[gateway]\nneuron_token = ['sk-SECRET-1']\n", "gateway.neuron_token"),
    ("[gateway]\nadmin_keys = 'sk-SECRET-1'\n", "gateway.admin_keys"),
    ("[gateway]\nadmin_keys = ['ok', ['sk-SECRET-1']]\n", "gateway.admin_keys[1]"),
    ("[entitlements]\nstore = 'redis2://:sk-SECRET-1@cache:6379/0'\n", "[entitlements] store"),
    ("[entitlements]\n[[entitlements.keys]]\nkey = ['sk-SECRET-1']\naccount_id = 'a'\n",
     "entitlements.keys[0].key"),
])
def test_config_errors_name_secret_fields_never_their_values(tmp_path, cortex_toml, field):
    # Config errors land in the journal and in Ansible output.
    (tmp_path / "models.toml").write_text("")
    (tmp_path / "cortex.toml").write_text('models_config = "models.toml"\n' + cortex_toml)
    r = subprocess.run([str(BIN / "cortex"), "check-config", str(tmp_path / "cortex.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and field in r.stderr, r.stderr
    assert "SECRET" not in r.stderr + r.stdout


def test_neuron_config_errors_never_echo_tokens(tmp_path):
    from cortex.neuron import config as neuron_config

    p = tmp_path / "neuron.toml"
    p.write_text("auth_token = 12345678\n[hf]\ntoken = ['hf_SECRET']\n")
    with pytest.raises(ConfigError) as exc:
        neuron_config.load(p)
    assert "auth_token" in str(exc.value) and "12345678" not in str(exc.value)


def test_cli_environment_is_not_config(tmp_path, monkeypatch):
    # `cortex status` reads CORTEX_URL / CORTEX_ADMIN_KEY; `cortex serve` must not take them
    # for config overrides (unknown keys 'url' and 'admin_key').
    (tmp_path / "models.toml").write_text("")
    (tmp_path / "cortex.toml").write_text('models_config = "models.toml"\n'
                                          '[gateway]\nlisten = "127.0.0.1:31313"\n')
    monkeypatch.setenv("CORTEX_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("CORTEX_ADMIN_KEY", "adm")
    cfg, _ = gw_config.load(tmp_path / "cortex.toml")
    assert cfg.gateway.admin_keys == []
    r = subprocess.run([str(BIN / "cortex"), "check-config", str(tmp_path / "cortex.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_metrics_scrapes_never_poll_the_neurons(neuron, tmp_path, monkeypatch):
    # The metrics port is unauthenticated: a scrape that polled every neuron let anyone
    # turn scrapes into neuron load until the nodes were marked unhealthy.
    from cortex.gateway.config import GatewayConfig, GatewaySection, ModelsConfig, NeuronEntry
    from cortex.gateway.serve import MetricsServer

    (tmp_path / "mp").mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "mp"))
    polls = []

    def counting(environ, start_response):
        if environ["PATH_INFO"] == "/health":
            polls.append(1)
        return neuron.app(environ, start_response)

    server = Served(counting)
    cfg = GatewayConfig(gateway=GatewaySection(poll_interval_secs=3600,
                                               state_dir=str(tmp_path / "state")),
                        neurons=[NeuronEntry("n1", server.url)])
    metrics = MetricsServer(cfg, ModelsConfig(), "127.0.0.1", 0)
    try:
        metrics.fleet.wait_first_poll(10)
        for _ in range(20):
            text = requests.get(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10).text
            assert 'cortex_node_up{node="n1"} 1.0' in text
        assert len(polls) == 1  # the poller's first poll; the next is an hour away
    finally:
        metrics.stop()
        server.close()


def test_a_failed_reload_keeps_the_last_good_config(gateway_process):
    # HUP with a broken cortex.toml once brought the start-up config back, and with it
    # every key revoked since.
    import re
    import signal

    def keys(*names: str) -> dict:
        return {"entitlements": {"require_auth": True,
                                 "keys": [{"key": k, "account_id": k} for k in names]}}

    gw = gateway_process({}, workers=1, entitlements=keys("sk-a", "sk-b"))

    def status(key: str) -> int | None:
        try:  # auth comes before routing: 404 for a good key, 401 for a revoked one
            return requests.post(gw.url + "/v1/chat/completions", timeout=5,
                                 json={"model": "nope", "messages": [{"role": "user",
                                                                      "content": "x"}]},
                                 headers={"Authorization": f"Bearer {key}"}).status_code
        except requests.RequestException:
            return None

    def workers() -> list[str]:
        return re.findall(r"Booting worker with pid: (\d+)", gw.log.read_text())

    assert status("sk-b") == 404
    config = tomllib.loads(gw.config.read_text())
    tomlfile.write(gw.config, tomlfile.merge(config, keys("sk-a")))  # revoke sk-b
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait(lambda: status("sk-b") == 401, "sk-b revoked", 60)
    gw.config.write_text("[gateway\n")  # broken
    booted = len(workers())
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait(lambda: len(workers()) > booted, "a new worker", 60)
    old = workers()[booted - 1]
    # Only the new one left.
    gw.wait(lambda: f"Worker exiting (pid: {old})" in gw.log.read_text(), "the old worker's exit",
            60)
    for _ in range(5):
        assert status("sk-b") == 401 and status("sk-a") == 404
    assert "reload failed, keeping the last good configuration" in gw.log.read_text()



def test_a_worker_stopped_while_it_builds_the_app_stops_cleanly():
    """`systemctl reload` right after a start (a deploy's restart, then its reload) stops
    workers still building the app. Their exit hooks once failed on the app not being
    there yet: the exception surfaced inside the build, a boot error, and gunicorn's
    master stopped, the gateway with it (seen once in CI under load)."""
    import signal
    from types import SimpleNamespace

    from cortex.gateway.serve import Master
    from cortex.gateway.worker import GatewayWorker

    worker = object.__new__(GatewayWorker)  # as gunicorn has it before load_wsgi: no .wsgi
    worker.alive = True
    worker.handle_exit(signal.SIGTERM, None)
    assert worker.alive is False
    Master.worker_exit(object.__new__(Master), SimpleNamespace(), worker)  # nothing to flush
