"""Mistral Small 3.x, Devstral, Ministral/Magistral, Mistral Nemo:
`[TOOL_CALLS]NAME[ARGS]{...}` (Small 3.2: `[TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{...}`; Nemo:
`[TOOL_CALLS][{"name": …, "arguments": {…}, "id": …}]`), thoughts in `[THINK]…[/THINK]`.

Mistral's templates take only call ids of nine letters and digits, and roles that alternate
user/assistant after one system message: `prepare` gives them that.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from typing import Any

from cortex.neuron.families.base import Malformed, Part, Tools, call
from cortex.neuron.families.family import Family
from cortex.neuron.families.grammar import ANY_OBJECT, Rules, lit
from cortex.neuron.families.hermes import parse_json_calls
from cortex.neuron.families.stream import Block, json_head

TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
THINK = ("[THINK]", "[/THINK]")
_ID = re.compile(r"^[A-Za-z0-9]{9}$")
HEAD = re.compile(r"(?P<name>[^\[\]{}]+?)(?:\[CALL_ID\](?P<id>[A-Za-z0-9]{9}))?\[ARGS\]")
_ALNUM = string.ascii_letters + string.digits


def alnum_id() -> str:
    """A fresh call id of the only kind Mistral's templates take: nine letters and digits."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


def parse_mistral(body: str, tools: Tools) -> list[Part]:
    head = body.lstrip()
    if head[:1] in ("[", "{"):
        calls = parse_json_calls(head, tools)
        for c in calls:  # the model's ids are kept only when Mistral's templates take them
            if not _ID.match(c.call_id):
                c.call_id = alnum_id()
        return calls
    if ARGS not in body:
        raise Malformed("no [ARGS]")
    name, args = body.split(ARGS, 1)
    call_id = ""
    if CALL_ID in name:
        name, call_id = name.split(CALL_ID, 1)
        call_id = call_id.strip()
    return [call(tools.check(name), args.strip(), call_id if _ID.match(call_id) else alnum_id())]


def mistral_id(call_id: str) -> str:
    """The nine-character id Mistral's templates insist on, the same for a call and its
    result."""
    if _ID.match(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()
    return digest[:9]


class Mistral(Family):
    name = "mistral"
    title = "Mistral Small 3.x, Devstral, Ministral/Magistral, Mistral Nemo"
    reasoning = THINK
    markers = (TOOL_CALLS, ARGS, CALL_ID, *THINK)

    @staticmethod
    def detect(template: str) -> bool:
        return TOOL_CALLS in template

    def prepare(self, messages: list[dict[str, Any]], template: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            m = dict(m)
            if m["role"] == "system" and i > 0:
                m = {"role": "user", "content": m["content"]}  # one system message only
            if m.get("tool_calls"):
                m["tool_calls"] = [dict(c, id=mistral_id(c.get("id") or f"{i}.{j}"))
                                   for j, c in enumerate(m["tool_calls"])]
            if m["role"] == "tool":
                m["tool_call_id"] = mistral_id(m.get("tool_call_id") or "")
            if m.get("reasoning_content") and "[THINK]" in template:  # thinking chunks
                m["content"] = [{"type": "thinking", "thinking": m.pop("reasoning_content")},
                                {"type": "text", "text": m.get("content") or ""}]
            prev = out[-1] if out else None
            if (prev is not None and m["role"] == prev["role"] == "user"
                    and isinstance(prev["content"], str) and isinstance(m["content"], str)):
                prev["content"] = f"{prev['content']}\n\n{m['content']}"  # roles alternate
                continue
            out.append(m)
        return out

    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        return f"{lit(TOOL_CALLS + name + ARGS)} {r.schema(params or ANY_OBJECT)}"

    def calls_rule(self, one: str, parallel: bool) -> str:
        return f"{one} ( {one} )*" if parallel else one

    def blocks(self, tools: Tools) -> list[Block]:
        return [Block(TOOL_CALLS, lambda body: parse_mistral(body, tools), json_after=(ARGS,),
                      head=json_head(HEAD, tools, alnum_id))]
