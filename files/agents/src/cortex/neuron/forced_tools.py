"""`tool_choice` "required" or a named function: a grammar that admits tool calls alone.

Calls are written in the model's family's own syntax (`Family.call_rule`: Hermes JSON in
`<tool_call>`, Qwen3-Coder's XML, Mistral's `[TOOL_CALLS]`, Harmony's commentary channel...),
the syntax its parser reads back. Each tool's `parameters` goes through the JSON-schema
converter that response_format uses (for the XML families, each parameter's schema), and
the grammar is checked lazily in the sequence's sampler chain (engines/llama_cpp.py), so a
model that would call anyway pays one check a token.

- parallel_tool_calls false: exactly one call. True or absent (OpenAI's default): one or
  more, as the family joins them. After the last call only end-of-generation fits, so
  finish_reason is "tool_calls" whenever max_tokens leaves room for the call.
- A reasoning model may think first. Such models are trained to plan before they act, and
  forcing the call from the first token takes that away (llama.cpp's server admits the
  thought too). The thought goes to reasoning_content, so the reply still holds calls alone.
  When the template opened the thought the reply starts inside it; when the model reasons
  and the request did not turn thinking off, a thought is optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cortex.core.errors import ApiError, BadRequest
from cortex.core.validate import get_bool
from cortex.neuron import chat as chatmod
from cortex.neuron.families.grammar import Rules
from cortex.neuron.structured import SchemaError, schema_gbnf

if TYPE_CHECKING:
    from cortex.neuron.chat import Prompt
    from cortex.neuron.engines import LoadedModel

_PROBE = 'root ::= "{}"'  # any engine that enforces grammars takes this one


def conflict() -> ApiError:
    return BadRequest(
        "response_format cannot be combined with tool_choice 'required' or a named function: "
        "the reply is then a tool call whose arguments follow the tool's parameters schema; "
        "drop response_format, or set tool_choice to 'auto'",
        code="conflicting_parameters", param="response_format")


def grammar_for(body: dict, forced: list[tuple[int, dict[str, Any]]], model: LoadedModel,
                prompt: Prompt) -> str:
    """The grammar of the reply to `body`, which must call one of `forced`; checked against
    the model's engine (a 400 naming the tool whose schema it cannot take)."""
    family = prompt.family
    r = Rules()
    alts = []
    for i, tool in forced:
        params = _parameters(i, tool)
        try:
            alts.append(family.call_rule(r, tool["function"]["name"], params))
        except SchemaError as exc:
            raise _bad(f"tools[{i}].function.parameters", str(exc)) from None
    one = r.add(" | ".join(f"( {a} )" for a in alts), "call")
    calls = family.calls_rule(one, get_bool(body, "parallel_tool_calls", True))
    may_think = (family.knows_reasoning(model.chat_template or "")
                 and chatmod.thinking(body) is not False)
    thought = family.thought_rule(r, in_reasoning=prompt.in_reasoning, may_think=may_think)
    r.rules.append(f"root ::= {thought}{calls}")
    grammar = r.text()
    _check(model, grammar, forced)
    return grammar


def _parameters(index: int, tool: dict[str, Any]) -> dict[str, Any]:
    where = f"tools[{index}].function.parameters"
    params = tool["function"].get("parameters")
    if params is None:  # no schema: any JSON object
        params = {"type": "object"}
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise _bad(where, 'expected the JSON Schema of an object: {"type": "object", '
                          '"properties": {...}}')
    try:
        schema_gbnf(params)  # the whole schema must convert, whatever the family writes
    except SchemaError as exc:
        raise _bad(where, str(exc)) from None
    return params


def _check(model: LoadedModel, grammar: str, forced: list[tuple[int, dict[str, Any]]]
           ) -> None:
    try:
        model.check_grammar(grammar)
        return
    except ApiError:
        pass
    try:
        model.check_grammar(_PROBE)
    except ApiError:
        raise BadRequest("tool_choice: this model's engine cannot force a tool call; use "
                         "tool_choice 'auto' or load the model with harness 'llama_cpp'",
                         code="invalid_tool_choice", param="tool_choice") from None
    for i, tool in forced:
        try:
            model.check_grammar(schema_gbnf(_parameters(i, tool)))
        except ApiError:
            raise _bad(f"tools[{i}].function.parameters",
                       "the schema gave a grammar llama.cpp rejects") from None
    raise BadRequest("tool_choice: llama.cpp rejects the grammar of these tools",
                     code="invalid_tool_choice", param="tool_choice")


def _bad(where: str, message: str) -> ApiError:
    return BadRequest(f"{where}: {message}", code="invalid_tool_parameters", param=where)
