"""A tiny scripted model standing in for an agent's model, for replaying recorded requests.

A recorded request from an agent (Claude Code, Codex) is tens of KB of prompt and tools.
Made of the tiny models' byte-level vocabulary it would be a token a byte and overflow any
context; with its own words in the vocabulary, it comes out at about as many tokens as a
real tokenizer makes of it (some 4 characters a token).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cortex.testing.tiny_gguf import N_LAYER, build_tiny_gguf


def build_agent_model(d: Path, recorded: str, *, script: Sequence[str], chat_template: str,
                      name: str = "tiny-agent", context_length: int = 16384,
                      compact: bool = False) -> Path:
    """`<name>.gguf` in `d`: answers with `script`, renders with `chat_template`, and knows
    every word (and space-led word) of the `recorded` request as a token of its own.

    compact: the request's most frequent runs of punctuation and blanks (JSON's `": "`, a
    template's indentation) are tokens too, so its prompt comes out at about half as many
    tokens and prefills several times faster (attention costs the square of its length);
    and the model has one block, not two (half the prefill again).
    """
    words = sorted(set(re.findall(r"[A-Za-z_]{3,}", recorded)))
    extra = [*words, *(" " + w for w in words)]
    if compact:
        text = _as_rendered(recorded)
        runs = Counter(re.findall(r"[^A-Za-z_]{2,12}", text))
        extra += [run for run, _ in runs.most_common(400)]
        extra += [" " * n for n in range(2, 33)] + ["\n" + " " * n for n in range(31)]
    return build_tiny_gguf(d / f"{name}.gguf", script=script, chat_template=chat_template,
                           name=name, context_length=context_length, extra_tokens=extra,
                           n_layer=1 if compact else N_LAYER)


def _as_rendered(recorded: str) -> str:
    """The request's text the way templates print it: its strings, and its JSON compact,
    spaced and indented (tools go in as one of these)."""
    try:
        value = json.loads(recorded)
    except ValueError:
        return recorded
    strings: list[str] = []

    def walk(v: object) -> None:
        if isinstance(v, str):
            strings.append(v)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    walk(value)
    dumps = [json.dumps(value), json.dumps(value, separators=(",", ":")),
             json.dumps(value, indent=4)]
    return "\n".join([*strings, *dumps])
