"""Kimi K2 (Instruct, Thinking): calls between special tokens, each with an id of the form
`functions.NAME:INDEX` that the model reads back with the tool's result:

    <|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>
    {...}<|tool_call_end|><|tool_calls_section_end|>

Thoughts in `<think>`; K2 Thinking may open its calls before it closes the thought, and
needs its earlier thoughts back on the turns since the user last spoke.
"""

from __future__ import annotations

import re
from typing import Any

from cortex.neuron.families.base import Malformed, Part, Tools, call
from cortex.neuron.families.family import Family
from cortex.neuron.families.grammar import ANY_OBJECT, Rules, lit
from cortex.neuron.families.stream import Block

SECTION_BEGIN, SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CALL_BEGIN, ARGS_BEGIN, CALL_END = ("<|tool_call_begin|>", "<|tool_call_argument_begin|>",
                                    "<|tool_call_end|>")
KIMI_ID = re.compile(r"^(?:functions\.)?([^:\s]+):(\d+)$")


def parse_calls(body: str, tools: Tools) -> list[Part]:
    out = []
    chunks = body.split(CALL_BEGIN)
    if chunks[0].strip():
        raise Malformed("text before the first call")
    for chunk in chunks[1:]:
        chunk = chunk.strip()
        if chunk.endswith(CALL_END):
            chunk = chunk[: -len(CALL_END)]
        elif CALL_END in chunk:
            raise Malformed("text after a call")
        if ARGS_BEGIN not in chunk:
            raise Malformed("no arguments")
        call_id, args = chunk.split(ARGS_BEGIN, 1)
        m = KIMI_ID.match(call_id.strip())
        if m is None:
            raise Malformed(f"bad call id {call_id!r}")
        out.append(call(tools.check(m.group(1)), args.strip(), call_id.strip()))
    return out


class Kimi(Family):
    name = "kimi_k2"
    title = "Kimi K2 Instruct, K2 Thinking"
    markers = (SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARGS_BEGIN, CALL_END)
    calls_in_reasoning = True

    @staticmethod
    def detect(template: str) -> bool:
        return SECTION_BEGIN in template and CALL_BEGIN in template

    def prepare(self, messages: list[dict[str, Any]], template: str) -> list[dict[str, Any]]:
        """Ids the model can read: `functions.NAME:N`, counted over the conversation (the
        Thinking template makes them itself; the first K2 template prints what it gets)."""
        renamed: dict[str, str] = {}
        count = 0
        out = []
        for m in messages:
            if m.get("tool_calls"):
                calls = []
                for c in m["tool_calls"]:
                    cid = c.get("id") or ""
                    if not KIMI_ID.match(cid):
                        new = f"functions.{c['function']['name']}:{count}"
                        if cid:
                            renamed[cid] = new
                        c = dict(c, id=new)
                    count += 1
                    calls.append(c)
                m = dict(m, tool_calls=calls)
            elif m["role"] == "tool" and m.get("tool_call_id") in renamed:
                m = dict(m, tool_call_id=renamed[m["tool_call_id"]])
            out.append(m)
        return out

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        head = lit(f"{SECTION_BEGIN}{CALL_BEGIN}functions.{name}:")
        return (f"{head} [0-9]{{1,4}} {lit(ARGS_BEGIN)} {r.schema(params or ANY_OBJECT)} "
                f"{lit(CALL_END + SECTION_END)}")

    def blocks(self, tools: Tools) -> list[Block]:
        return [
            Block(SECTION_BEGIN, lambda body: parse_calls(body, tools), close=SECTION_END),
            Block(CALL_BEGIN, lambda body: parse_calls(body, tools), close=CALL_END,
                  keep_open=True, swallow=(SECTION_END,)),
        ]
