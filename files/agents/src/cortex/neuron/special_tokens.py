"""Special-token text in what a client sends stays text (issue 19 item 12).

A prompt is rendered to text and tokenized with special tokens parsed, so that the
template's own `<|im_start|>` becomes the role token. A user who writes
`<|im_end|>\\n<|im_start|>system …` would get real role tokens too. So before rendering,
every control-token text inside a client's string is fenced with two private-use characters;
after rendering, fenced text is tokenized as plain text and the rest with specials parsed.
The model reads the user's characters exactly; they just are not role tokens.

Only control tokens count: llama.cpp matches user-defined tokens (`<think>`, `<tool_call>`
in Qwen's vocabulary) in any text, as the models were trained to read them.
"""

from __future__ import annotations

import re
import threading
import weakref
from functools import lru_cache
from typing import Any

from cortex.neuron.engines import LoadedModel

OPEN, CLOSE = "\ue000", "\ue001"  # private use: never a template's own text
_SENTINELS = re.compile(f"[{OPEN}{CLOSE}]")

_lock = threading.Lock()
_found: weakref.WeakKeyDictionary[LoadedModel, re.Pattern | None] = (
    weakref.WeakKeyDictionary())


def control_pattern(model: LoadedModel) -> re.Pattern | None:
    """A regex of the model's control-token texts (longest first), None if it has none;
    found once per model (a vocabulary scan: ~30 ms for 49k tokens)."""
    with _lock:
        if model in _found:
            return _found[model]
    texts = set()
    for i in range(getattr(model, "n_vocab", 0)):
        text = model.token_text(i)
        # Control tokens are markup: `<|im_end|>`, `[INST]`, `<start_of_turn>`.
        if len(text) > 2 and text[0] in "<[" and model.tokenize(
                text, add_bos=False, special=True) == [i] and model.tokenize(
                text, add_bos=False, special=False) != [i]:
            texts.add(text)
    pattern = None
    if texts:
        pattern = re.compile("|".join(re.escape(t) for t in sorted(texts, key=len,
                                                                    reverse=True)))
    with _lock:
        _found[model] = pattern
    return pattern


def fence(value: Any, pattern: re.Pattern | None) -> Any:
    """`value` (a client's messages or tools) with every control-token text in its strings
    fenced, and any fence character the client sent dropped."""
    if isinstance(value, str):
        if OPEN in value or CLOSE in value:
            value = _SENTINELS.sub("", value)
        if pattern is not None:
            value = pattern.sub(lambda m: f"{OPEN}{m.group()}{CLOSE}", value)
        return value
    if isinstance(value, list):
        return [fence(v, pattern) for v in value]
    if isinstance(value, dict):
        return {k: fence(v, pattern) for k, v in value.items()}
    return value


def plain(text: str) -> str:
    """Rendered text as the model reads it (the fences gone)."""
    return _SENTINELS.sub("", text) if OPEN in text or CLOSE in text else text


def tokenize(model: LoadedModel, text: str, *, add_bos: bool,
             pattern: re.Pattern | None) -> list[int]:
    """Tokens of a rendered prompt: fenced text as plain text, the rest with specials."""
    if OPEN not in text or pattern is None:
        return model.tokenize(plain(text), add_bos=add_bos, special=True)
    fenced = _fenced(pattern.pattern)
    tokens: list[int] = []
    pos = 0
    for m in fenced.finditer(text):
        tokens += model.tokenize(plain(text[pos:m.start()]), add_bos=add_bos and not tokens,
                                 special=True)
        tokens += model.tokenize(m.group(1), add_bos=False, special=False)
        pos = m.end()
    tokens += model.tokenize(plain(text[pos:]), add_bos=add_bos and not tokens, special=True)
    return tokens


@lru_cache(maxsize=16)
def _fenced(alternatives: str) -> re.Pattern:
    return re.compile(f"{OPEN}({alternatives}){CLOSE}")
