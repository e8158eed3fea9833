"""`tool_choice` "required" or a named function: a grammar that admits tool calls alone.

Calls are written the Hermes/Qwen way, `<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`, the one format OutputParser reads; the grammar is built from the parser's own
markers so the two cannot disagree, and chat.py prompts for that format whenever the model's
template does not. Each tool's `parameters` goes through the JSON-schema converter that
response_format uses, and the grammar is checked lazily in the sequence's sampler chain
(engines/llama_cpp.py), so a model that would call anyway pays one check a token.

- parallel_tool_calls false: exactly one call. True or absent (OpenAI's default): one or
  more, a newline allowed between them. After the last call only end-of-generation fits, so
  finish_reason is "tool_calls" whenever max_tokens leaves room for the call.
- A reasoning model may think first. Such models are trained to plan before they act, and
  forcing the call from the first token takes that away (llama.cpp's server admits the
  thought too). The thought goes to reasoning_content, so the reply still holds calls alone.
  When the template opened `<think>` the reply starts inside the thought; when the template
  knows `<think>` and the request did not turn thinking off, a `<think>` block is optional.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from cortex.core.errors import ApiError, BadRequest
from cortex.core.validate import get_bool
from cortex.neuron import chat as chatmod
from cortex.neuron.outputs import THINK_CLOSE, THINK_OPEN, TOOL_CLOSE, TOOL_OPEN
from cortex.neuron.structured import SchemaError, schema_gbnf

if TYPE_CHECKING:
    from cortex.neuron.chat import Prompt
    from cortex.neuron.engines import LoadedModel

_RULE = re.compile(r"^([A-Za-z0-9-]+) ::= ", re.M)
# A GBNF rule body's pieces: literals and character classes (never renamed), repetition
# counts, rule names, and single characters.
_PIECE = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{[\d,\s]*\}|[A-Za-z0-9-]+|.',
                    re.S)
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
    parts = [_arguments(i, tool) for i, tool in forced]
    rules = ['space ::= " "?']
    for n, ((_, tool), args) in enumerate(zip(forced, parts, strict=True)):
        rules += _prefixed(args, f"t{n}-")
        rules.append(
            f'call-{n} ::= "{{" space "\\"name\\"" space ":" space '
            f'{_literal(json.dumps(tool["function"]["name"], ensure_ascii=False))} space '
            f'"," space "\\"arguments\\"" space ":" space t{n}-root "}}" space')
    alts = " | ".join(f"call-{n}" for n in range(len(forced)))
    rules.append(f'call ::= {_literal(TOOL_OPEN)} "\\n"? ( {alts} ) "\\n"? '
                 f'{_literal(TOOL_CLOSE)}')
    calls = ('call ( "\\n"? call )*' if get_bool(body, "parallel_tool_calls", True)
             else "call")
    rules.append(f"root ::= {_thought(body, model, prompt, rules)}{calls}")
    grammar = "\n".join(rules)
    _check(model, grammar, forced, parts)
    return grammar


def _arguments(index: int, tool: dict[str, Any]) -> str:
    where = f"tools[{index}].function.parameters"
    params = tool["function"].get("parameters")
    if params is None:  # no schema: any JSON object
        params = {"type": "object"}
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise _bad(where, 'expected the JSON Schema of an object: {"type": "object", '
                          '"properties": {...}}')
    try:
        return schema_gbnf(params)
    except SchemaError as exc:
        raise _bad(where, str(exc)) from None


def _thought(body: dict, model: LoadedModel, prompt: Prompt, rules: list[str]) -> str:
    """The grammar's start: the rest of an opened thought, an optional one, or nothing."""
    template = model.chat_template or ""
    knows = THINK_OPEN in template or "enable_thinking" in template  # as /models reports it
    if not prompt.in_reasoning and not (knows and chatmod.thinking(body) is not False):
        return ""
    rules += _without(THINK_CLOSE, "thought")
    closed = f'thought-0 {_literal(THINK_CLOSE)} "\\n"{{0,2}} '
    return closed if prompt.in_reasoning else f"( {_literal(THINK_OPEN)} {closed})? "


def _without(marker: str, name: str) -> list[str]:
    """Rules `name-0`.. for any text that never contains `marker`: the states of a matcher
    that has read the first k characters of it (`marker[0]` must not recur in it)."""
    first = marker[0]
    rules = []
    for k, want in enumerate(marker):
        alts = []
        if k + 1 < len(marker):
            alts.append(f"{_literal(want)} {name}-{k + 1}")
        if want != first:
            alts.append(f"{_literal(first)} {name}-1")
        alts.append(f"[^{_chars({want, first})}] {name}-0")
        rules.append(f"{name}-{k} ::= ( {' | '.join(alts)} )?")
    return rules


def _check(model: LoadedModel, grammar: str, forced: list[tuple[int, dict[str, Any]]],
           parts: list[str]) -> None:
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
    for (i, _), part in zip(forced, parts, strict=True):
        try:
            model.check_grammar(part)
        except ApiError:
            raise _bad(f"tools[{i}].function.parameters",
                       "the schema gave a grammar llama.cpp rejects") from None
    raise BadRequest("tool_choice: llama.cpp rejects the grammar of these tools",
                     code="invalid_tool_choice", param="tool_choice")


def _prefixed(gbnf: str, prefix: str) -> list[str]:
    """A grammar's rules with every rule name prefixed, so that several tools' grammars
    (each with its own `root`, `space`, property rules) live side by side."""
    pieces = _RULE.split(gbnf)[1:]
    rules = dict(zip(pieces[::2], pieces[1::2], strict=True))

    def rename(body: str) -> str:
        return "".join(prefix + p if p in rules else p for p in _PIECE.findall(body.strip()))

    return [f"{prefix}{name} ::= {rename(body)}" for name, body in rules.items()]


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _chars(chars: set[str]) -> str:
    return "".join(f"\\x{ord(c):02X}" for c in sorted(chars))


def _bad(where: str, message: str) -> ApiError:
    return BadRequest(f"{where}: {message}", code="invalid_tool_parameters", param=where)
