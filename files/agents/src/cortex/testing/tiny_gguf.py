"""Tiny GGUF models with a scripted answer, for tests that need the real llama.cpp engine.

The files are a few hundred KB, load in milliseconds and answer with a known token script,
so tests can check real engine behaviour (EOS, stop strings, max_tokens, <think>, tool calls).

How the script is wired: every attention output projection and FFN down projection is zero,
so the residual stream at a position is just the embedding of the token there, and the
logits are ``output @ rmsnorm(embd[last])``. Each script token that has a successor gets its
own orthonormal embedding direction; every other token shares one "default" direction. Row
``output[next]`` is the direction of the token before ``next``, and the default direction
points at ``script[0]``. So after any prompt whose last token is not in ``script[:-1]`` (the
ChatML generation prompt ends with "\\n", the byte token <0x0A>) the model emits the script
with a logit margin of ~64, which survives temperature 1 and Q8_0. After the last script
token (a non-script token again) the model starts over: a script ending in ``<|im_end|>``
stops there, a ``loop=True`` script repeats until max_tokens.

``gguf`` and ``numpy`` are test-only dependencies and are imported lazily.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

EOS = "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Token texts use the SentencePiece space "▁" (plain spaces are converted). Every token but
# the last must be unique: a token can only have one successor.
SCRIPT_HELLO = ["Hello", "▁from", "▁tiny", "▁cortex", ".", EOS]
SCRIPT_THINK = [
    "<think>", "\nThe", "▁user", "▁says", "▁hi.\n", "</think>", "\n\nHi", "▁there", "!", EOS,
]
SCRIPT_TOOL = [
    "<tool_call>", "\n{", '"name":', '▁"get_weather",', '▁"arguments":', '▁{"city":',
    '▁"Paris"}}\n', "</tool_call>", EOS,
]
SCRIPT_LOOP = ["▁la", "▁di", "▁da"]  # build with loop=True: "la di da la di da ..." forever
SCRIPTS = {
    "hello": (SCRIPT_HELLO, False),
    "think": (SCRIPT_THINK, False),
    "tool": (SCRIPT_TOOL, False),
    "loop": (SCRIPT_LOOP, True),
}

N_EMBD, N_FF, N_LAYER, N_HEAD, N_CTX = 64, 128, 2, 4, 2048
_SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", EOS]
_TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
_CHARS = ["▁"] + [chr(c) for c in range(0x21, 0x7F)]
_WORDS = "the a an is of to and in it you I what how Hello hello world capital France Paris"
_MAX_PIECE_BYTES = 32  # llama-cpp-python detokenizes through a 32-byte buffer per token


def script_text(script: Sequence[str]) -> str:
    """The text the engine should return for ``script`` (control tokens are not rendered)."""
    return "".join("" if _is_control(t) else t for t in _norm(script)).replace("▁", " ")


def _norm(tokens: Sequence[str]) -> list[str]:
    return [t.replace(" ", "▁") for t in tokens]


def _is_control(text: str) -> bool:
    return text in _SPECIAL or (text.startswith("<|") and text.endswith("|>"))


def _build_vocab(words: Sequence[str]) -> tuple[list[str], list[int], list[float]]:
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    seen = set(tokens)

    def add(text: str, ttype: int) -> None:
        if text not in seen:
            seen.add(text)
            tokens.append(text)
            types.append(ttype)

    for t in ("<|im_start|>", EOS):
        add(t, TokenType.CONTROL)  # parsed in prompts only with special=True, never rendered
    for t in _TAGS:
        add(t, TokenType.USER_DEFINED)  # parsed in any prompt, rendered in output text
    for t in _CHARS:
        add(t, TokenType.NORMAL)
    for word in words:
        if _is_control(word):
            add(word, TokenType.CONTROL)
        elif re.fullmatch(r"</?[A-Za-z_]\w*>|</?\uff5c[^\uff5c]+\uff5c\w*>", word):
            # markup tags, and DeepSeek's markers (fullwidth bars): rendered as written
            add(word, TokenType.USER_DEFINED)
        else:
            # SPM only merges adjacent pieces that are themselves tokens, so add every
            # prefix (2+ chars) to let llama.cpp tokenize the word back into one token.
            for end in range(2, len(word) + 1):
                add(word[:end], TokenType.NORMAL)
    # Higher score = merged first; longer pieces win. Bytes and specials never merge.
    normal = zip(tokens, types, strict=True)
    scores = [float(len(t)) if ty == TokenType.NORMAL else 0.0 for t, ty in normal]
    return tokens, [int(t) for t in types], scores


def build_tiny_gguf(
    path: str | Path,
    *,
    script: Sequence[str] | None = None,
    loop: bool = False,
    tied: bool = False,
    arch: str = "llama",
    ftype: str = "F16",
    chat_template: str | None = None,
    name: str = "tiny",
    extra_tokens: Sequence[str] = (),
    seed: int = 0,
    n_head_kv: int = N_HEAD,
    context_length: int = N_CTX,
    pooling: str | None = None,
    n_layer: int = N_LAYER,
    n_embd: int = N_EMBD,
) -> Path:
    """Write a tiny GGUF model to ``path`` and return the path.

    script: token texts the model answers with (default ``SCRIPT_HELLO``; ``SCRIPT_LOOP``
        when ``loop``). It must end in ``<|im_end|>`` unless ``loop`` is set, in which case
        it must not contain it and the model repeats it forever.
    tied: no ``output.weight`` (tied embeddings, random): loads and generates, but the
        output is not scripted (it tends to repeat the last input token).
    arch: "llama" or "qwen2" (q/k/v biases, NEOX rope; same SentencePiece vocab).
    ftype: "F16", "Q8_0" or "F32" for the 2-D weights (norms and biases stay F32).
    pooling: "none", "mean", "cls", "last" or "rank" writes ``<arch>.pooling_type``, as
        embedding models carry it; None (default) leaves it out, as chat models do. The
        hidden state at a position is rmsnorm(embd[token]), so pooled vectors are known.
    n_layer: blocks (the script does not depend on them; one prefills a long prompt in
        half the time of two).
    n_embd: the hidden size, and so the embeddings' dimensions (64 keeps the file tiny).
    """
    import gguf
    import numpy as np

    if arch not in ("llama", "qwen2"):
        raise ValueError(f"unsupported arch {arch!r}")
    qtype = {"F32": gguf.GGMLQuantizationType.F32, "F16": gguf.GGMLQuantizationType.F16,
             "Q8_0": gguf.GGMLQuantizationType.Q8_0}.get(ftype)
    if qtype is None:
        raise ValueError(f"unsupported ftype {ftype!r}")
    if pooling is not None and pooling.upper() not in gguf.PoolingType.__members__:
        raise ValueError(f"unknown pooling {pooling!r}")
    if N_HEAD % n_head_kv:
        raise ValueError(f"n_head_kv must divide {N_HEAD}")
    script = _norm(script if script is not None else (SCRIPT_LOOP if loop else SCRIPT_HELLO))
    if loop == (EOS in script) or (not loop and script[-1] != EOS):
        raise ValueError(f"script must {'not contain' if loop else 'end with'} {EOS}")
    preds = script[:-1]  # preds[i] is followed by script[i + 1]
    if len(set(preds)) != len(preds):
        raise ValueError("script tokens must be unique (a token has only one successor)")
    if "<0x0A>" in preds or "\n" in preds:
        raise ValueError("'\\n' ends the ChatML prompt, so it cannot be in script[:-1]")
    if len(preds) >= n_embd:
        raise ValueError(f"script too long: at most {n_embd} tokens")
    for t in script:
        if len(t.replace("▁", " ").encode()) > _MAX_PIECE_BYTES:
            raise ValueError(f"token {t!r} is longer than {_MAX_PIECE_BYTES} bytes")

    words = [*(" " + w for w in _WORDS.split()), *_norm(extra_tokens), *script]
    tokens, types, scores = _build_vocab(_norm(words))
    index = {t: i for i, t in enumerate(tokens)}
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    if tied:
        embd = rng.standard_normal((n_vocab, n_embd))
        output = None
    else:
        # Columns of q are orthonormal; scale so every embedding has rms 1.
        q, _ = np.linalg.qr(rng.standard_normal((n_embd, len(preds) + 1)))
        dirs = q.T * np.sqrt(n_embd)
        embd = np.tile(dirs[0], (n_vocab, 1))  # default direction for every token
        output = np.zeros((n_vocab, n_embd))
        output[index[script[0]]] += dirs[0]
        for i, tok in enumerate(preds):
            embd[index[tok]] = dirs[i + 1]
            output[index[script[i + 1]]] += dirs[i + 1]

    n_head_dim = n_embd // N_HEAD
    n_kv = n_head_dim * n_head_kv
    tensors: dict[str, np.ndarray] = {"token_embd.weight": embd}
    if output is not None:
        tensors["output.weight"] = output
    tensors["output_norm.weight"] = np.ones(n_embd)
    for i in range(n_layer):
        small = {  # these weights only shape the (ignored) attention and FFN activations
            "attn_q.weight": (n_embd, n_embd), "attn_k.weight": (n_kv, n_embd),
            "attn_v.weight": (n_kv, n_embd), "ffn_gate.weight": (N_FF, n_embd),
            "ffn_up.weight": (N_FF, n_embd),
        }
        if arch == "qwen2":
            small |= {"attn_q.bias": (n_embd,), "attn_k.bias": (n_kv,), "attn_v.bias": (n_kv,)}
        for key, shape in small.items():
            tensors[f"blk.{i}.{key}"] = rng.normal(0.0, 0.02, shape)
        tensors[f"blk.{i}.attn_norm.weight"] = np.ones(n_embd)
        tensors[f"blk.{i}.ffn_norm.weight"] = np.ones(n_embd)
        # zero: the residual stream stays equal to the token embedding
        tensors[f"blk.{i}.attn_output.weight"] = np.zeros((n_embd, n_embd))
        tensors[f"blk.{i}.ffn_down.weight"] = np.zeros((n_embd, N_FF))

    path = Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType[pooling.upper()])
    w.add_vocab_size(n_vocab)
    ftypes = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
              "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    w.add_file_type(int(ftypes[ftype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(index["<s>"])
    w.add_eos_token_id(index[EOS])
    w.add_unk_token_id(index["<unk>"])
    w.add_pad_token_id(index[EOS])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)  # else llama.cpp prepends "▁" to text after each special
    w.add_chat_template(chat_template if chat_template is not None else CHATML_TEMPLATE)
    for tname, data in tensors.items():
        data = data.astype(np.float32)
        if data.ndim == 1:
            w.add_tensor(tname, data)
        else:
            w.add_tensor(tname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a tiny scripted GGUF model.")
    p.add_argument("out", type=Path)
    p.add_argument("--script", choices=sorted(SCRIPTS), default="hello")
    p.add_argument("--tied", action="store_true")
    p.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    p.add_argument("--ftype", choices=["F16", "Q8_0", "F32"], default="F16")
    p.add_argument("--pooling", choices=["none", "mean", "cls", "last", "rank"])
    p.add_argument("--name", default="tiny")
    args = p.parse_args(argv)
    script, loop = SCRIPTS[args.script]
    out = build_tiny_gguf(args.out, script=script, loop=loop, tied=args.tied, arch=args.arch,
                          ftype=args.ftype, name=args.name, pooling=args.pooling)
    print(f"{out} ({out.stat().st_size} bytes): {script_text(script)!r}")


if __name__ == "__main__":
    main()
