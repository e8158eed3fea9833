"""The tiny scripted GGUF models, checked through the real llama.cpp engine."""

import time

import pytest

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")
jinja2 = pytest.importorskip("jinja2")

from cortex.testing.tiny_gguf import (  # noqa: E402
    CHATML_TEMPLATE,
    EOS,
    SCRIPT_HELLO,
    SCRIPT_LOOP,
    SCRIPT_THINK,
    SCRIPT_TOOL,
    build_tiny_gguf,
    main,
    script_text,
)

MESSAGES = [{"role": "user", "content": "Say hello."}]


def load(path, **kw):
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, **kw)
    return llm, (time.perf_counter() - start) * 1000


def chat_prompt(messages=MESSAGES):
    return jinja2.Template(CHATML_TEMPLATE).render(messages=messages, add_generation_prompt=True)


def token_id(llm, text):
    (tid,) = [i for i in range(llm.n_vocab()) if llm._model.token_get_text(i) == text]
    return tid


def greedy(llm, prompt, max_tokens=64):
    out = []
    for tok in llm.generate(llm.tokenize(prompt.encode(), special=True), temp=0.0):
        out.append(tok)
        if tok == llm.token_eos() or len(out) >= max_tokens:
            return out
    return out


def test_loads_fast_with_metadata(tmp_path):
    path = build_tiny_gguf(tmp_path / "tiny.gguf", name="tiny-hello")
    llm, ms = load(path)
    print(f"\nload: {ms:.1f} ms, {path.stat().st_size} bytes, n_vocab={llm.n_vocab()}")
    assert llm.metadata["tokenizer.chat_template"] == CHATML_TEMPLATE
    assert llm.metadata["general.name"] == "tiny-hello"
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.n_embd() == 64
    assert llm.n_ctx() == 256


def test_tokenizer(tmp_path):
    llm, _ = load(build_tiny_gguf(tmp_path / "tiny.gguf"))
    start, end = token_id(llm, "<|im_start|>"), token_id(llm, EOS)
    assert llm.token_eos() == end
    assert llm.tokenize(b"<|im_start|>", add_bos=False, special=True) == [start]
    # without special=True, control tokens are plain text
    assert len(llm.tokenize(b"<|im_start|>", add_bos=False, special=False)) > 1
    # no BOS is added; "\n" is the byte token, the last token of the generation prompt
    prompt = llm.tokenize(chat_prompt().encode(), special=True)
    assert prompt[0] == start
    assert prompt[-1] == token_id(llm, "<0x0A>")
    assert llm.tokenize(b"\n", add_bos=False) == [token_id(llm, "<0x0A>")]
    # the script words tokenize back into the script tokens (SPM merges over prefixes)
    text = script_text(SCRIPT_HELLO).encode()
    assert llm.tokenize(text, add_bos=False) == [token_id(llm, t) for t in SCRIPT_HELLO[:-1]]
    # <think> and friends are user-defined: one token even without special=True, rendered
    think = llm.tokenize(b"<think>", add_bos=False)
    assert len(think) == 1
    assert llm.detokenize(think) == b"<think>"
    assert llm.detokenize([end]) == b""  # control tokens are not rendered


@pytest.mark.parametrize("script", [SCRIPT_HELLO, SCRIPT_THINK, SCRIPT_TOOL],
                         ids=["hello", "think", "tool"])
@pytest.mark.parametrize(("arch", "ftype", "n_head_kv"),
                         [("llama", "F16", 4), ("llama", "Q8_0", 2), ("qwen2", "F16", 2),
                          ("qwen2", "Q8_0", 4)])
def test_greedy_yields_script_then_eos(tmp_path, script, arch, ftype, n_head_kv):
    path = build_tiny_gguf(tmp_path / "tiny.gguf", script=script, arch=arch, ftype=ftype,
                           n_head_kv=n_head_kv)
    llm, _ = load(path)
    tokens = greedy(llm, chat_prompt())
    assert tokens == [token_id(llm, t.replace(" ", "▁")) for t in script]
    assert tokens[-1] == llm.token_eos()

    res = llm.create_completion(chat_prompt(), max_tokens=64, temperature=0.0)
    assert res["choices"][0]["text"] == script_text(script)
    assert res["choices"][0]["finish_reason"] == "stop"
    # llama-cpp-python does not count the EOS token in usage
    assert res["usage"]["completion_tokens"] == len(script) - 1


def test_chat_completion_uses_template(tmp_path):
    llm, _ = load(build_tiny_gguf(tmp_path / "tiny.gguf"))
    res = llm.create_chat_completion(messages=MESSAGES, max_tokens=32, temperature=0.0)
    assert res["choices"][0]["message"]["content"] == "Hello from tiny cortex."
    assert res["choices"][0]["finish_reason"] == "stop"


def test_any_prompt_starts_the_script(tmp_path):
    llm, _ = load(build_tiny_gguf(tmp_path / "tiny.gguf"))
    res = llm.create_completion("The capital of France is", max_tokens=32, temperature=0.0)
    assert res["choices"][0]["text"] == "Hello from tiny cortex."


def test_stop_sequence(tmp_path):
    llm, _ = load(build_tiny_gguf(tmp_path / "tiny.gguf"))
    res = llm.create_completion(chat_prompt(), max_tokens=32, temperature=0.0, stop=[" tiny"])
    assert res["choices"][0]["text"] == "Hello from"
    assert res["choices"][0]["finish_reason"] == "stop"


def test_loop_reaches_max_tokens(tmp_path):
    llm, _ = load(build_tiny_gguf(tmp_path / "tiny.gguf", loop=True))
    res = llm.create_completion(chat_prompt(), max_tokens=10, temperature=0.0)
    assert res["choices"][0]["finish_reason"] == "length"
    assert res["usage"]["completion_tokens"] == 10
    assert res["choices"][0]["text"] == " la di da la di da la di da la"
    assert script_text(SCRIPT_LOOP) == " la di da"


@pytest.mark.parametrize("ftype", ["F16", "Q8_0"])
def test_sampling_at_temperature_one_still_follows_script(tmp_path, ftype):
    llm, _ = load(build_tiny_gguf(tmp_path / "tiny.gguf", script=SCRIPT_THINK, ftype=ftype))
    for seed in range(5):
        res = llm.create_completion(chat_prompt(), max_tokens=32, temperature=1.0, top_k=0,
                                    top_p=1.0, min_p=0.0, seed=seed)
        assert res["choices"][0]["text"] == script_text(SCRIPT_THINK)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tied_embeddings_load_and_generate(tmp_path, arch):
    path = build_tiny_gguf(tmp_path / "tiny.gguf", tied=True, arch=arch, ftype="Q8_0")
    llm, ms = load(path)
    print(f"\ntied {arch} Q8_0 load: {ms:.1f} ms")
    res = llm.create_completion(chat_prompt(), max_tokens=8, temperature=0.0)
    assert res["usage"]["completion_tokens"] >= 1


def test_bad_scripts_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        build_tiny_gguf(tmp_path / "x.gguf", script=["a", "b", "a", EOS])
    with pytest.raises(ValueError, match="end with"):
        build_tiny_gguf(tmp_path / "x.gguf", script=["a", "b"])
    with pytest.raises(ValueError, match="not contain"):
        build_tiny_gguf(tmp_path / "x.gguf", script=["a", EOS], loop=True)
    with pytest.raises(ValueError, match="ChatML"):
        build_tiny_gguf(tmp_path / "x.gguf", script=["a", "\n", "b", EOS])


def test_cli(tmp_path, capsys):
    main([str(tmp_path / "t.gguf"), "--script", "tool", "--ftype", "Q8_0"])
    assert "get_weather" in capsys.readouterr().out
    llm, _ = load(tmp_path / "t.gguf")
    res = llm.create_completion(chat_prompt(), max_tokens=32, temperature=0.0)
    assert res["choices"][0]["text"] == script_text(SCRIPT_TOOL)
