"""neuron.toml: defaults, the file, environment overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from cortex.core.config import ConfigError
from cortex.neuron import config as neuron_config


def test_config_defaults_file_and_env(tmp_path, monkeypatch):
    cfg = neuron_config.NeuronConfig()
    assert cfg.listen == "0.0.0.0:13131" and cfg.admission.max_queue_depth == 8
    p = tmp_path / "neuron.toml"
    p.write_text('listen = "127.0.0.1:9000"\ndefault_models = ["file:a", {model_id = "hf:o/b", '
                 'quant = "Q4_K_M"}]\n[admission]\nmax_queue_depth = 2\n')
    monkeypatch.setenv("NEURON_HF__TOKEN", "t0k")
    monkeypatch.setenv("NEURON_ADMISSION__MAX_WAIT_SECS", "5")
    cfg = neuron_config.load(p)
    assert cfg.bind == ("127.0.0.1", 9000)
    assert cfg.hf.token == "t0k" and cfg.admission.max_wait_secs == 5.0
    specs = cfg.default_model_specs()
    assert [s.model_id for s in specs] == ["file:a", "hf:o/b"] and specs[1].quant == "Q4_K_M"


@pytest.mark.parametrize("text, fragment", [
    ("listen = 5", "key 'listen': expected a string"),
    ("lissen = '1'", "unknown key 'lissen'"),
    ("[admission]\nmax_queue_depth = 'x'", "key 'admission.max_queue_depth'"),
    ("[admission]\nmax_in_flight = -1", "max_in_flight must be 0 (the slot count) or more"),
    ("listen = '0.0.0.0:http'", "the port must be a number"),
    ("[hf\n", "not valid TOML"),
    ("default_models = [{quant = 'x'}]", "model_id"),
])
def test_config_errors_name_file_and_key(tmp_path, text, fragment):
    p = tmp_path / "neuron.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        neuron_config.load(p)
    assert str(p) in str(exc.value) and fragment in str(exc.value)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        neuron_config.load(tmp_path / "absent.toml")


def test_check_config_cli(tmp_path, capsys):
    from cortex.cli import neuron_main

    p = tmp_path / "n.toml"
    p.write_text("listen = 1\n")
    assert neuron_main(["check-config", str(p)]) == 2
    assert "expected a string" in capsys.readouterr().err


# Whether `neuron serve` starts with this neuron.toml: listening beyond loopback with no
# auth_token, anyone on the network could load and run models (issue 19 item 19).
OPEN_OR_NOT = [
    ("", False),  # the defaults: every interface, no token
    ("listen = '0.0.0.0:13131'", False),
    ("listen = '10.0.0.5:13131'", False),
    ("listen = 'neuron1.lan:13131'", False),  # a name may resolve to anything
    ("listen = '[::]:13131'", False),
    ("listen = '127.0.0.1:13131'", True),
    ("listen = '127.0.0.2:13131'", True),
    ("listen = '[::1]:13131'", True),
    ("listen = 'localhost:13131'", True),
    ("auth_token = 'a-shared-token'", True),
    ("allow_insecure = true", True),
    ("listen = '10.0.0.5:13131'\nallow_insecure = true", True),
]


@pytest.mark.parametrize("text, starts", OPEN_OR_NOT)
def test_a_neuron_open_to_its_network_needs_a_token_or_says_so(tmp_path, text, starts):
    p = tmp_path / "neuron.toml"
    p.write_text(text + "\n")
    if starts:
        neuron_config.load(p)
        return
    with pytest.raises(ConfigError) as exc:
        neuron_config.load(p)
    assert str(p) in str(exc.value) and "reachable from other hosts" in str(exc.value)
    assert "allow_insecure = true" in str(exc.value) and "auth_token" in str(exc.value)


def test_neuron_serve_refuses_to_start_open(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "neuron"
    r = subprocess.run([str(exe), "serve"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 2 and "reachable from other hosts" in r.stderr, r.stderr
    (tmp_path / "n.toml").write_text("listen = '0.0.0.0:0'\n")
    r = subprocess.run([str(exe), "check-config", str(tmp_path / "n.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "allow_insecure" in r.stderr, r.stderr
