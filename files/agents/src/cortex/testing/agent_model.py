"""A tiny scripted model standing in for an agent's model, for replaying recorded requests.

A recorded request from an agent (Claude Code, Codex) is tens of KB of prompt and tools.
Made of the tiny models' byte-level vocabulary it would be a token a byte and overflow any
context; with its own words in the vocabulary, it comes out at about as many tokens as a
real tokenizer makes of it (some 4 characters a token).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from cortex.testing.tiny_gguf import build_tiny_gguf


def build_agent_model(d: Path, recorded: str, *, script: Sequence[str], chat_template: str,
                      name: str = "tiny-agent", context_length: int = 16384) -> Path:
    """`<name>.gguf` in `d`: answers with `script`, renders with `chat_template`, and knows
    every word (and space-led word) of the `recorded` request as a token of its own."""
    words = sorted(set(re.findall(r"[A-Za-z_]{3,}", recorded)))
    return build_tiny_gguf(d / f"{name}.gguf", script=script, chat_template=chat_template,
                           name=name, context_length=context_length,
                           extra_tokens=[*words, *(" " + w for w in words)])
