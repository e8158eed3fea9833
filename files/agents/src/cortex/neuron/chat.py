"""OpenAI chat and completion bodies → a prompt and sampling settings for the engine."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cortex.core.errors import BadRequest
from cortex.core.validate import get_bool, get_number, get_stop, invalid
from cortex.neuron import chat_template, families, special_tokens
from cortex.neuron.config import SamplingDefaults
from cortex.neuron.engines import GenerationRequest, LoadedModel
from cortex.neuron.families import Family

ROLES = {"system", "developer", "user", "assistant", "tool"}


@dataclass
class Prompt:
    text: str
    tokens: list[int]
    in_reasoning: bool  # the template opened the model's thought (`<think>`) for it
    tools: bool
    family: Family = field(default_factory=lambda: families.FAMILIES["generic"])
    offered: list[dict[str, Any]] = field(default_factory=list)  # the tools, as sent


def sampling(body: dict, *, prompt_tokens: list[int], n_ctx: int, max_prompt_tokens: int,
             defaults: SamplingDefaults) -> GenerationRequest:
    if get_number(body, "n", 1, lo=1, integer=True) != 1:
        raise invalid("n", "only n=1 is supported; send several requests for several choices")
    if not prompt_tokens:  # nothing to condition on: the engine cannot start a sequence
        raise invalid("prompt", "must not be empty")
    limit = min(n_ctx - 1, max_prompt_tokens or n_ctx - 1)
    if len(prompt_tokens) > limit:
        raise BadRequest(
            f"the prompt is {len(prompt_tokens)} tokens and this model's context allows "
            f"{limit}; shorten the messages or use a model with a longer context",
            code="context_length_exceeded", param="messages", max=limit,
            estimated_prompt_tokens=len(prompt_tokens))
    room = n_ctx - len(prompt_tokens)
    max_tokens = get_number(body, "max_completion_tokens", None, lo=1, integer=True)
    if max_tokens is None:
        max_tokens = get_number(body, "max_tokens", None, lo=1, integer=True)
    return GenerationRequest(
        prompt_tokens=prompt_tokens,
        max_tokens=min(max_tokens or room, room),
        temperature=get_number(body, "temperature", defaults.temperature, lo=0, hi=2),
        top_p=get_number(body, "top_p", defaults.top_p, lo=0, hi=1),
        top_k=get_number(body, "top_k", defaults.top_k, lo=0, integer=True),
        min_p=get_number(body, "min_p", defaults.min_p, lo=0, hi=1),
        repeat_penalty=get_number(body, "repeat_penalty", defaults.repeat_penalty, lo=0, hi=10),
        presence_penalty=get_number(body, "presence_penalty", 0.0, lo=-2, hi=2),
        frequency_penalty=get_number(body, "frequency_penalty", 0.0, lo=-2, hi=2),
        seed=get_number(body, "seed", None, integer=True),
    )


def stops(body: dict) -> list[str]:
    return get_stop(body)


def chat_prompt(body: dict, model: LoadedModel, family: Family | None = None) -> Prompt:
    """The prompt of a chat request, rendered by the model's template the way its family
    (`family`, else read off the template) expects."""
    family = family or families.detect(model.chat_template)
    # Special-token text in what the client sent stays text (special_tokens.py).
    pattern = special_tokens.control_pattern(model)
    text, offered = render(body, model.chat_template, family,
                           bos_token=model.token_text(model.bos_token_id),
                           eos_token=model.token_text(model.eos_token_id), pattern=pattern)
    plain = special_tokens.plain(text)
    bos = model.token_text(model.bos_token_id)
    add_bos = model.add_bos and not (bos and plain.startswith(bos))
    tokens = special_tokens.tokenize(model, text, add_bos=add_bos, pattern=pattern)
    return Prompt(plain, tokens, in_reasoning=family.opens_reasoning(plain),
                  tools=bool(offered), family=family, offered=offered)


def render(body: dict, template: str | None, family: Family, *, bos_token: str = "",
           eos_token: str = "", pattern: re.Pattern | None = None
           ) -> tuple[str, list[dict[str, Any]]]:
    """The chat request's prompt text (special-token text of the client's fenced, see
    special_tokens.py) and the tools offered to the model."""
    messages = _messages(body.get("messages"))
    offered, forced = _offered(body)
    tools = [t for _, t in offered] or None
    source = template or ""
    if tools and not family.describes_tools(source, forced=bool(forced)):
        # The template knows no tools (or, for a syntax we cannot read, a call is forced):
        # describe them in the system prompt, in the syntax the family's parser reads.
        messages = _tools_in_system(messages, tools, family)
        tools = None
    messages = family.prepare(messages, source)
    kwargs: dict[str, Any] = family.template_kwargs(body)
    reasoning = thinking(body)
    if reasoning is not None:
        kwargs["enable_thinking"] = reasoning
    try:
        text = chat_template.render(
            template, special_tokens.fence(messages, pattern),
            tools=special_tokens.fence(tools, pattern), bos_token=bos_token,
            eos_token=eos_token, add_generation_prompt=True, **kwargs)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError,
            RecursionError) as exc:
        # The template is trusted code run on the client's data (its tool schemas, say):
        # a Python error inside it is a request it cannot render, not a server fault.
        raise BadRequest(f"the model's chat template failed on these messages or tools: "
                         f"{type(exc).__name__}: {exc}", code="chat_template_error",
                         param="messages") from None
    return text, [t for _, t in offered]


def thinking(body: dict) -> bool | None:
    """Whether the request asks the model to think (None: it does not say)."""
    reasoning = body.get("reasoning_effort") or body.get("enable_thinking")
    return None if reasoning is None else reasoning not in (False, "none", "off")


def completion_prompt(body: dict, model: LoadedModel) -> Prompt:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise invalid("prompt", "expected a string (one prompt per request)")
    tokens = model.tokenize(prompt, add_bos=model.add_bos, special=False)
    return Prompt(prompt, tokens, in_reasoning=False, tools=False)


def _messages(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        raise BadRequest("'messages' is required: a list of {role, content}",
                         code="missing_messages", param="messages")
    if not isinstance(raw, list):
        raise invalid("messages", "expected a list of {role, content} objects")
    if not raw:
        raise invalid("messages", "must contain at least one message")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(where, "expected an object with role and content")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise invalid(f"{where}.role", f"expected one of {sorted(ROLES)}, got {role!r}")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role,
                               "content": _text(m.get("content"), f"{where}.content", role)}
        if role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(m["tool_calls"], f"{where}.tool_calls")
        if role == "tool":
            msg["tool_call_id"] = _opt_str(m, "tool_call_id", f"{where}.tool_call_id")
            if isinstance(m.get("name"), str):
                msg["name"] = m["name"]
        if isinstance(m.get("reasoning_content"), str):
            msg["reasoning_content"] = m["reasoning_content"]
        out.append(msg)
    return out


def _text(content: Any, where: str, role: str) -> str:
    if content is None:
        if role in ("assistant",):
            return ""
        raise invalid(where, "content is required")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid(f"{where}[{j}]", "expected a content part {type, ...}")
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise invalid(f"{where}[{j}].text", "expected a string")
                parts.append(part["text"])
            elif part["type"] in ("image_url", "input_image", "input_audio", "file"):
                raise BadRequest(f"{where}[{j}]: this model reads text only; "
                                 f"{part['type']} parts are not supported",
                                 code="unsupported_content", param=f"{where}[{j}]")
            else:
                raise invalid(f"{where}[{j}].type", f"unknown content part {part['type']!r}")
        return "".join(parts)
    raise invalid(where, "expected a string or a list of content parts")


def _tool_calls(raw: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise invalid(where, "expected a list")
    calls = []
    for i, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"{where}[{i}]", "expected {type: function, function: {name, "
                                          "arguments}}")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:  # templates render arguments with tojson: give them the object
                args = json.loads(args) if args.strip() else {}
            except (ValueError, RecursionError):
                pass
        elif not isinstance(args, dict):
            raise invalid(f"{where}[{i}].function.arguments", "expected a JSON string")
        calls.append({"id": _opt_str(call, "id", f"{where}[{i}].id"), "type": "function",
                      "function": {"name": fn["name"], "arguments": args}})
    return calls


def forced_tools(body: dict) -> list[tuple[int, dict[str, Any]]] | None:
    """The tools (with their index in `tools`) one of which the reply must call, or None
    when `tool_choice` leaves the model free to answer in words."""
    offered, forced = _offered(body)
    return offered if forced else None


def _offered(body: dict) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
    """The tools offered to the model, with their index in `tools`; whether one must be
    called ("required" or a named function)."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools", "expected a list of {type: function, function: {...}}")
    for i, t in enumerate(tools or []):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"tools[{i}]", "expected {type: function, function: {name, "
                                        "description?, parameters?}}")
    get_bool(body, "parallel_tool_calls", True)
    choice = body.get("tool_choice", "auto")
    if choice is None:
        choice = "auto"
    if not isinstance(choice, dict) and choice not in ("none", "auto", "required"):
        raise invalid("tool_choice", "expected 'none', 'auto', 'required' or "
                                     "{type: function, function: {name}}")
    if choice == "none":
        return [], False
    if isinstance(choice, dict):
        fn = choice.get("function")
        if choice.get("type") != "function" or not isinstance(fn, dict) or not isinstance(
                fn.get("name"), str):
            raise invalid("tool_choice", "expected {type: function, function: {name}}")
    if choice != "auto" and not tools:
        raise invalid("tool_choice", "a required or named tool call needs 'tools' to "
                                     "choose from; send tools or drop tool_choice")
    indexed = list(enumerate(tools or []))
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        indexed = [(i, t) for i, t in indexed if t["function"]["name"] == name]
        if not indexed:
            raise invalid("tool_choice", f"no tool named {name!r} in tools")
        return indexed[:1], True
    return indexed, choice == "required"


def _opt_str(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid(where, f"expected a string, got {type(value).__name__}")
    return value


def _tools_in_system(messages: list[dict], tools: list[dict], family: Family) -> list[dict]:
    block = family.tools_system("\n".join(json.dumps(t["function"]) for t in tools))
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0], content=f"{messages[0]['content']}\n\n{block}")
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def stream_flag(body: dict) -> bool:
    return get_bool(body, "stream")
