"""neuron.toml: defaults, the file, environment overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from cortex.core.config import ConfigError
from cortex.neuron import config as neuron_config


def test_config_defaults_file_and_env(tmp_path, monkeypatch):
    cfg = neuron_config.load(None)
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
