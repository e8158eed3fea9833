"""The family interface: how a family spots its template, shapes the conversation for it,
reads its output and writes a forced call. One subclass a family."""

from __future__ import annotations

from typing import Any

from cortex.neuron.families.base import Tools
from cortex.neuron.families.grammar import Rules, lit
from cortex.neuron.families.steps import StepParser
from cortex.neuron.families.stream import Block, Parser, Syntax

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


class Family:
    """One way of writing tool calls and reasoning, as a model's chat template teaches it.

    A subclass says how to spot its template (`detect`), what its markers are (`markers`:
    special tokens the output must show so that its parser can read them), how the
    conversation must be shaped before its template renders it (`prepare`), where its
    calls are written (`blocks`, or a `parser` of its own) and how a forced call is
    written (`call_rule`).
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

    def parser(self, *, tools: Tools, in_reasoning: bool, parse_tools: bool,
               stream_args: bool = False) -> StepParser:
        """A parser of this family's output (`parse_tools` False: calls are words;
        `stream_args`: a call's arguments go out as they come, where its blocks allow)."""
        syntax = Syntax(self.reasoning, self.blocks(tools) if parse_tools else [],
                        calls_in_reasoning=self.calls_in_reasoning)
        return Parser(syntax, in_reasoning=in_reasoning, stream_args=stream_args)

    def blocks(self, tools: Tools) -> list[Block]:
        """Where this family writes its calls, and how each is read (stream.Block)."""
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
