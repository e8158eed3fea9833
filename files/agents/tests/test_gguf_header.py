"""Reading a GGUF file's header without loading it: metadata, facts, a memory estimate."""

from __future__ import annotations

import pytest

from cortex.neuron import gguf_header


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


def test_the_block_sizes_are_ggmls():
    from gguf.constants import GGML_QUANT_SIZES

    theirs = {t.value: sizes for t, sizes in GGML_QUANT_SIZES.items()}
    assert {t: theirs.get(t) for t in gguf_header.GGML_BLOCKS} == gguf_header.GGML_BLOCKS


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> bytes:
    from cortex.testing.tiny_gguf import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "m.gguf").read_bytes()


# Where a copy of a model can stop: (a fraction of the file, or bytes from its end).
CUTS = {"in the magic": 2, "in the version": 6, "in the counts": 20, "in a key": 40,
        "in the token list": 0.005, "in the tensor index": 0.03, "in the first tensors": 0.2,
        "half way": 0.5, "one byte short": -1}


@pytest.mark.parametrize("where", CUTS)
def test_a_truncated_file_is_refused_with_its_sizes(whole, tmp_path, where):
    cut = CUTS[where]
    n = cut if isinstance(cut, int) and cut > 0 else len(whole) + cut if cut < 0 else int(
        len(whole) * cut)
    p = tmp_path / "cut.gguf"
    p.write_bytes(whole[:n])
    with pytest.raises(gguf_header.GGUFError, match=r"truncated|bad magic") as e:
        gguf_header.read_metadata(p, check_tensors=True)
    if n >= 4:
        assert "truncated" in str(e.value)


def test_the_whole_file_passes_the_tensor_check(whole, tmp_path):
    p = tmp_path / "whole.gguf"
    p.write_bytes(whole)
    assert gguf_header.read_metadata(p, check_tensors=True)["gguf.tensor_count"] > 0


@pytest.mark.parametrize("key, value", [
    ("llama.context_length", "2048"), ("llama.block_count", -2),
    ("llama.embedding_length", 1.5), ("llama.attention.head_count_kv", ["x"]),
    ("llama.attention.head_count", True)])
def test_metadata_that_is_not_a_count_is_named(key, value):
    meta = {"general.architecture": "llama", "llama.context_length": 2048,
            "llama.block_count": 2, "llama.embedding_length": 64, key: value}
    with pytest.raises(gguf_header.GGUFError, match=rf"{key} is .*not a count"):
        gguf_header.describe(meta)


def test_a_broken_model_file_is_a_422_naming_the_problem(neuron_factory, whole, tmp_path):
    import gguf

    models = tmp_path / "models"
    models.mkdir()
    (models / "cut.gguf").write_bytes(whole[:len(whole) // 2])
    w = gguf.GGUFWriter(str(models / "odd.gguf"), "llama")
    w.add_string("llama.context_length", "long")  # a count written as text
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    n = neuron_factory(models_dir=models)
    for name, problem in (("cut", "truncated"), ("odd", "llama.context_length is 'long'")):
        r = n.post("/models/load", {"model_id": f"file:{name}"})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["kind"] == "invalid_gguf" and err["model_id"] == f"file:{name}"
        assert err["detail"].startswith(f"{name}.gguf: ") and problem in err["detail"]
