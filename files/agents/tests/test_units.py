"""Unit checks of the pure pieces: config, preflight choices, stream parsers, GGUF header."""

from __future__ import annotations

import pytest

from cortex.core.config import ConfigError
from cortex.neuron import config as neuron_config
from cortex.neuron import gguf_header
from cortex.neuron.outputs import OutputParser
from cortex.neuron.preflight import classify, edit_distance, quant_of
from cortex.neuron.textstream import TextStream


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


def test_classify_and_quant_labels():
    assert classify(["a.gguf"]) == "gguf"
    assert classify(["a.gguf", "b.safetensors"]) == "mixed"
    assert classify(["b.safetensors"]) == "dense_safetensors"
    assert classify(["README.md"]) == "empty"
    assert quant_of("Qwen2.5-7B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_of("model.iq3_xxs.gguf") == "IQ3_XXS"
    assert quant_of("big-Q8_0-00001-of-00003.gguf") == "Q8_0"
    assert quant_of("model-f16.gguf") == "F16"
    assert edit_distance("q6k", "q6_k") == 1


def test_output_parser_handles_markers_split_across_chunks():
    p = OutputParser(parse_tools=True)
    text = ('<thi', 'nk>plan</th', 'ink>\n\nHi <tool', '_call>{"name": "f", "arguments": ',
            '{"a": 1}}</tool_call>')
    parts = [part for chunk in text for part in p.feed(chunk)] + p.finish()
    kinds = [(x.kind, x.text or x.name) for x in parts]
    assert kinds == [("reasoning", "plan"), ("content", "Hi "), ("tool_call", "f")]
    assert parts[-1].arguments == '{"a": 1}'


def test_output_parser_keeps_invalid_tool_calls_as_text():
    p = OutputParser(parse_tools=True)
    parts = p.feed("<tool_call>not json</tool_call>") + p.finish()
    assert [x.kind for x in parts] == ["content"]
    assert parts[0].text == "<tool_call>not json</tool_call>"
    p = OutputParser(parse_tools=True)
    parts = p.feed("<tool_call>{\"name\": ") + p.finish()  # cut off by max_tokens
    assert parts[0].kind == "content" and parts[0].text.startswith("<tool_call>")


def test_output_parser_starts_in_reasoning_when_template_opened_think():
    p = OutputParser(in_reasoning=True)
    parts = p.feed("hmm</think>Yes") + p.finish()
    assert [(x.kind, x.text) for x in parts] == [("reasoning", "hmm"), ("content", "Yes")]


def test_text_stream_holds_back_partial_stops_and_utf8():
    s = TextStream(["END"])
    assert s.feed(b"abc E") == "abc "
    assert s.feed(b"N") == ""
    assert s.feed(b"Dx") == "" and s.stopped_by == "END"
    s = TextStream([])
    assert s.feed("é".encode()[:1]) == ""
    assert s.feed("é".encode()[1:]) == "é"
    s = TextStream(["zz"])
    assert s.feed(b"az") == "a" and s.flush() == "z"


def test_gguf_header(models_dir):
    meta = gguf_header.read_metadata(models_dir / "tiny-hello.gguf")
    facts = gguf_header.describe(meta)
    assert facts["architecture"] == "llama" and facts["n_layer"] == 2
    assert facts["context_length"] == 2048 and "im_start" in facts["chat_template"]
    assert gguf_header.estimate_mb(models_dir / "tiny-hello.gguf", meta, 2048) >= 64


def test_gguf_header_rejects_garbage(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGML" + b"\0" * 20)
    with pytest.raises(gguf_header.GGUFError):
        gguf_header.read_metadata(p)


def _nesting(v) -> int:
    if isinstance(v, dict):
        return 1 + max(map(_nesting, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_nesting, v), default=0)
    return 0


def test_json_depth_scan_matches_the_real_nesting():
    # The depth check reads raw bytes: brackets, quotes and backslashes inside strings
    # must not fool it (property test over arbitrary JSON).
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from cortex.core.wire import _depth

    tricky = st.text(st.sampled_from('{}[]"\\\\ab\u00e9\U0001F600'), max_size=8)
    values = st.recursive(st.none() | st.integers() | tricky,
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(tricky, inner, max_size=3), max_leaves=20)

    @settings(max_examples=300, deadline=None)
    @given(v=values, ensure_ascii=st.booleans())
    def check(v, ensure_ascii):
        import json

        assert _depth(json.dumps(v, ensure_ascii=ensure_ascii).encode()) == _nesting(v)

    check()


def test_brackets_in_strings_are_not_nesting():
    import json

    from cortex.core.wire import MAX_JSON_DEPTH, parse_json_object

    text = "[" * (MAX_JSON_DEPTH * 3) + '"\\'
    body = parse_json_object(json.dumps({"messages": [{"content": text}]}).encode())
    assert body["messages"][0]["content"] == text
