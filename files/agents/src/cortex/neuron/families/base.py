"""What every model family shares: the parts a reply is split into, the family interface,
and the helpers its parsers use on the model's text (bounded JSON, values typed from a
tool's schema, call ids).

Model output is untrusted text: nothing here raises on it. A call that cannot be read
(bad JSON, an unknown function, nesting past MAX_DEPTH, cut short) is `Malformed`, which
the parsers turn back into the model's own words as content.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from cortex.neuron.families.grammar import Rules, lit

MAX_DEPTH = 64  # JSON nesting a call's arguments may have; deeper is malformed, not a crash
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# For templates that know nothing of tools: describe them the Hermes way.
TOOLS_SYSTEM = (
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


class Malformed(ValueError):
    """Model output that does not read as the family's call syntax (kept as content)."""


@dataclass
class Part:
    kind: str  # "content" | "reasoning" | "tool_call"
    text: str = ""
    name: str = ""
    arguments: str = ""  # JSON text, as OpenAI's tool_calls carry it
    call_id: str = ""


@dataclass
class Tools:
    """The tools offered to the model, by name: their parameter schemas type the values
    that some families write untyped, and a call to any other name is malformed."""

    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, tools: list[dict[str, Any]] | None) -> Tools:
        schemas = {}
        for t in tools or []:
            fn = t.get("function") if isinstance(t, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                params = fn.get("parameters")
                schemas[fn["name"]] = params if isinstance(params, dict) else {}
        return cls(schemas)

    def check(self, name: str) -> str:
        name = name.strip()
        if not name or (self.schemas and name not in self.schemas):
            raise Malformed(f"no tool named {name!r}")
        return name

    def param(self, name: str, key: str) -> dict[str, Any] | None:
        props = self.schemas.get(name, {}).get("properties")
        schema = props.get(key) if isinstance(props, dict) else None
        return schema if isinstance(schema, dict) else None


def call(name: str, arguments: Any, call_id: str = "") -> Part:
    """A tool-call part; `arguments` an object (or JSON text of one)."""
    if isinstance(arguments, str):
        arguments = loads(arguments) if arguments.strip() else {}
    if not isinstance(arguments, dict):
        raise Malformed("arguments must be a JSON object")
    return Part("tool_call", name=name, arguments=json.dumps(arguments, ensure_ascii=False),
                call_id=call_id or new_call_id())


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_ALNUM = string.ascii_letters + string.digits


def alnum_id(n: int = 9) -> str:
    """Mistral's call ids: exactly nine letters and digits (its templates refuse others)."""
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


def depth(text: str) -> int:
    """How deeply brackets nest in JSON text (strings skipped)."""
    deepest = level = 0
    for m in _BRACKETS.finditer(_STRINGS.sub("", text)):
        level += 1 if m.group() in "[{" else -1
        deepest = max(deepest, level)
    return deepest


def loads(text: str) -> Any:
    """JSON from the model, nesting bounded: Malformed instead of any exception."""
    if depth(text) > MAX_DEPTH:
        raise Malformed(f"nested more than {MAX_DEPTH} levels deep")
    try:
        # strict=False: a raw newline in a string is the model's text, not a broken call
        return json.loads(text, strict=False)
    except (ValueError, RecursionError) as exc:
        raise Malformed(str(exc)) from None


def typed(raw: str, schema: dict[str, Any] | None) -> Any:
    """A parameter value the family wrote as bare text, typed by its JSON schema: text for a
    string parameter, JSON for the others, and a best guess when the schema does not say."""
    kinds = _types(schema)
    if kinds == {"string"}:
        return raw
    try:
        value = loads(raw)
    except Malformed:
        return raw
    if not kinds or _type_of(value) in kinds or (
            _type_of(value) == "integer" and "number" in kinds):
        return value
    return raw if "string" in kinds else value


def _types(schema: dict[str, Any] | None) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    if isinstance(schema.get("enum"), list):
        return {_type_of(v) for v in schema["enum"]}
    if "const" in schema:
        return {_type_of(schema["const"])}
    out: set[str] = set()
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            out |= _types(sub)
    return out


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def one_call_per_message(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates that render one call an assistant message (gpt-oss, Llama 3): an
    assistant message with several calls as one message a call, each followed by its
    result (matched by id) where the results follow the calls."""
    out: list[dict[str, Any]] = []
    placed: set[int] = set()
    for i, m in enumerate(messages):
        if i in placed:
            continue
        calls = (m.get("tool_calls") or []) if m["role"] == "assistant" else []
        if len(calls) < 2:
            out.append(m)
            continue
        results = {}  # call id -> index of its result among the messages that follow
        for j in range(i + 1, len(messages)):
            if messages[j]["role"] != "tool":
                break
            results.setdefault(messages[j].get("tool_call_id"), j)
        for k, c in enumerate(calls):
            out.append(dict(m, tool_calls=[c]) if k == 0 else
                       {"role": "assistant", "content": "", "tool_calls": [c]})
            j = results.get(c.get("id"))
            if j is not None and c.get("id"):
                out.append(messages[j])
                placed.add(j)
    return out


class Parser(Protocol):
    """Reads a model's output as it streams (stream.Parser, harmony.HarmonyParser)."""

    tool_calls: int  # calls read so far

    def feed(self, text: str) -> list[Part]: ...

    def finish(self) -> list[Part]: ...


class Family:
    """One way of writing tool calls and reasoning, as a model's chat template teaches it.

    A subclass says how to spot its template (`detect`), what its markers are (`markers`:
    special tokens the output must show so that its parser can read them), how the
    conversation must be shaped before its template renders it (`prepare`), how to parse
    the output (`parser`) and how a forced call is written (`grammar.call_rule`).
    """

    name = "generic"
    title = ""  # who writes this way, for /models and the docs
    reasoning: tuple[str, str] | None = (THINK_OPEN, THINK_CLOSE)
    markers: tuple[str, ...] = ()
    calls_in_reasoning = False  # a call may open while the model still thinks (Kimi)

    @staticmethod
    def detect(template: str) -> bool:
        return False

    def describes_tools(self, template: str, *, forced: bool = False) -> bool:
        """Whether the template tells the model of its tools itself (else chat.py does, in
        the system prompt, the Hermes way)."""
        return "tools" in template

    def tools_system(self, tools: str) -> str:
        """The system prompt's description of `tools` (one JSON signature a line) and of
        how to call them, for a template that does not describe them itself."""
        return TOOLS_SYSTEM.format(tools=tools)

    def prepare(self, messages: list[dict[str, Any]], template: str) -> list[dict[str, Any]]:
        """The messages as this family's template wants them (ids, reasoning, one call per
        message...). `messages` are this request's own copies."""
        return messages

    def template_kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        return {}

    def opens_reasoning(self, prompt: str) -> bool:
        """Whether the rendered prompt leaves the model inside its reasoning."""
        return bool(self.reasoning) and prompt.rstrip().endswith(self.reasoning[0])

    def parser(self, *, tools: Tools, in_reasoning: bool, parse_tools: bool) -> Parser:
        raise NotImplementedError

    # -- forced calls (grammar.py) ----------------------------------------------------
    def call_rule(self, r: Rules, name: str, params: dict[str, Any] | None) -> str:
        """GBNF for one call of tool `name` whose arguments follow `params`."""
        raise NotImplementedError

    def calls_rule(self, one: str, parallel: bool) -> str:
        """GBNF for the reply's calls, each `one`: one or more, or exactly one."""
        return f'{one} ( "\\n"? {one} )*' if parallel else one

    def thought_rule(self, r: Rules, *, in_reasoning: bool, may_think: bool) -> str:
        """What may come before the calls: the rest of a thought the prompt opened, an
        optional thought, or nothing."""
        if not self.reasoning or not (in_reasoning or may_think):
            return ""
        open_, close = self.reasoning
        closed = f'{r.until(close)} {lit(close)} "\\n"{{0,2}} '
        return closed if in_reasoning else f"( {lit(open_)} {closed})? "

    def knows_reasoning(self, template: str) -> bool:
        """Whether the model reasons (as /models reports it)."""
        return bool(self.reasoning) and (self.reasoning[0] in template
                                         or "enable_thinking" in template)
