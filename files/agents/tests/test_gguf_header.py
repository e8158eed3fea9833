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
