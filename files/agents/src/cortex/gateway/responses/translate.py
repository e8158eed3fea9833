"""OpenAI Responses requests → chat-completion bodies (the replies: `reply`).

Pure data in and out (no Flask, no gateway objects). The gateway is stateless: a request
carries the whole conversation in `input` (Codex always does), and what only OpenAI's
servers could do (stored responses, hosted tools) is refused clearly or left out.
The neuron speaks OpenAI chat with `reasoning_content` (the model's thinking) as extension.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from cortex.core.errors import BadRequest

log = logging.getLogger(__name__)

ROLES = {"user", "assistant", "system", "developer"}
TEXT_PARTS = {"input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"}
# Items of OpenAI's built-in tools (hosted ones, and those only OpenAI's models are trained
# to call): the fleet offers none of them, so the history drops them (their outcome, if
# any, is in the messages around them).
HOSTED_ITEMS = {"web_search_call", "file_search_call", "computer_call", "computer_call_output",
                "image_generation_call", "code_interpreter_call", "local_shell_call",
                "local_shell_call_output", "shell_call", "shell_call_output",
                "apply_patch_call", "apply_patch_call_output", "mcp_call", "mcp_list_tools",
                "mcp_approval_request", "mcp_approval_response", "tool_search_call",
                "tool_search_output", "compaction", "compaction_summary"}
# What the model itself produced in a turn (its thoughts go with these).
MODEL_ITEMS = {"reasoning", "function_call", "custom_tool_call", *HOSTED_ITEMS}
# Fields that need state kept on the server; the gateway keeps none.
STATEFUL = {
    "previous_response_id": "send the whole conversation in 'input' instead",
    "conversation": "send the whole conversation in 'input' instead",
    "prompt": "send the prompt's text in 'instructions' and 'input' instead",
}
# A flattened namespace tool is called `<namespace>__<name>` by the model.
NAMESPACE_SEP = "__"


def bad(param: str, message: str, code: str = "invalid_request_body") -> BadRequest:
    return BadRequest(f"{param}: {message}", code=code, param=param)


@dataclass
class Plan:
    """What a Responses request becomes: the chat body, and what the reply needs back."""

    chat: dict[str, Any]
    model: str  # as the client named it; the response echoes it
    stream: bool
    # flattened tool name → (namespace, name), to name a call as the client declared it
    names: dict[str, tuple[str, str]] = field(default_factory=dict)
    echo: dict[str, Any] = field(default_factory=dict)  # request fields a response repeats


# -- request -----------------------------------------------------------------------------
def to_chat(body: dict[str, Any]) -> Plan:
    """The chat-completion body (and reply context) for a Responses request body."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "field required: the model to answer with", "missing_model_field")
    for key, fix in STATEFUL.items():
        if body.get(key) is not None:
            raise bad(key, f"this gateway is stateless and keeps no responses or "
                           f"conversations; {fix}", "unsupported_parameter")
    if body.get("background") is True:
        raise bad("background", "background responses need stored state, which this gateway "
                                "does not keep; send the request without it",
                  "unsupported_parameter")
    # `store`: OpenAI's default is true, and the SDK sends nothing unless told, so a request
    # that leaves it out is served (the response says `store: false`: nothing was kept).
    # One that asks for it in so many words is refused: it means to fetch or continue the
    # response later, which would fail then, far from the cause.
    store = body.get("store")
    if store not in (None, True, False):
        raise bad("store", "expected a boolean")
    if store is True:
        raise bad("store", "this gateway is stateless and keeps no responses; send "
                           "store: false or leave it out, and the whole conversation in "
                           "'input' each turn", "unsupported_parameter")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise bad("stream", "expected a boolean")
    tools, names = _tools(body.get("tools"))
    messages = _messages(body.get("input"), body.get("instructions"), names)
    chat: dict[str, Any] = {"model": model, "messages": messages}
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise bad("max_output_tokens", "expected an integer of at least 1")
        chat["max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):  # the neuron checks their ranges
        if body.get(key) is not None:
            chat[key] = body[key]
    for key in ("prompt_cache_key", "user"):  # the session's key, for the gateway's affinity
        if isinstance(body.get(key), str):
            chat[key] = body[key]
    tool_choice = _tool_choice(body.get("tool_choice"), names, tools)
    if tool_choice == "none":
        tools = []  # nothing to offer: the model then answers in words
    if tools:
        chat["tools"] = tools
        if tool_choice is not None:
            chat["tool_choice"] = tool_choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    fmt = _format(body.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    thinking = _thinking(body.get("reasoning"))
    if thinking is not None:
        chat["enable_thinking"] = thinking
    return Plan(chat, model, bool(stream), names, _echo(body))


def _messages(raw: Any, instructions: Any, names: dict) -> list[dict[str, Any]]:
    if raw is None:
        raise bad("input", "field required: a string or a list of input items",
                  "missing_input")
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise bad("input", "expected a string or a list of input items")
    system: list[str] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad("instructions", "expected a string")
        if instructions:
            system.append(instructions)
    out: list[dict[str, Any]] = []
    reasoning: list[str] = []  # thoughts waiting for the assistant turn they belong to
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(where, "expected an input item object {type, ...}")
        kind = item.get("type", "message" if "role" in item else None)
        if item.get("role") != "assistant" and kind not in MODEL_ITEMS:
            reasoning.clear()  # thoughts belong to the model's turn right after them
        if kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise bad(f"{where}.role", f"expected one of {sorted(ROLES)}, got {role!r}")
            text, images = _content(item.get("content"), f"{where}.content")
            if role in ("system", "developer"):
                if images:
                    raise bad(f"{where}.content", f"a {role} message holds text only")
                # The leading instructions form one system message (a prefix that stays put
                # from turn to turn, for the neuron's prompt cache); later ones stay where
                # they are.
                if not out:
                    system.append(text)
                else:
                    out.append({"role": "system", "content": text})
            elif role == "assistant":
                if images:
                    raise bad(f"{where}.content", "an assistant message holds text only")
                turn = _assistant(out, reasoning)
                turn["content"] = (turn["content"] or "") + text
            else:
                out.append({"role": "user", "content": _user_content(text, images)})
        elif kind in ("function_call", "custom_tool_call"):
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not call_id:
                raise bad(f"{where}.call_id", "expected the call's id (a string)")
            if not isinstance(name, str) or not name:
                raise bad(f"{where}.name", "expected the called function's name")
            if kind == "custom_tool_call":  # a freeform tool's call: its text as one argument
                arguments = json.dumps({"input": str(item.get("input", ""))})
            else:
                arguments = item.get("arguments", "")
                if not isinstance(arguments, str):
                    raise bad(f"{where}.arguments", "expected the arguments as a JSON string")
            ns = item.get("namespace")
            if isinstance(ns, str) and ns:
                name = f"{ns}{NAMESPACE_SEP}{name}"
            turn = _assistant(out, reasoning)
            turn.setdefault("tool_calls", []).append(
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": arguments or "{}"}})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad(f"{where}.call_id", "expected the id of the call this answers")
            text, images = _content(item.get("output"), f"{where}.output", required=True)
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
            if images:  # a tool message holds text only: its images follow as the user's
                out.append({"role": "user", "content": _user_content("", images)})
        elif kind == "reasoning":
            reasoning += _reasoning_text(item, where)
        elif kind == "item_reference":
            raise bad(f"{where}.type", "item references need stored items, which this "
                                       "stateless gateway does not keep; send the item itself",
                      "unsupported_parameter")
        elif kind in HOSTED_ITEMS:
            log.debug("dropping hosted-tool item %s from the history", kind)
        else:
            raise bad(f"{where}.type", f"unknown input item type {kind!r}")
    if system:
        out.insert(0, {"role": "system", "content": "\n\n".join(system)})
    if not out:
        raise bad("input", "expected at least one message or item the model can read")
    return out


def _assistant(out: list[dict[str, Any]], reasoning: list[str]) -> dict[str, Any]:
    """The assistant turn that the next text or call joins: the last message if it is the
    assistant's, else a new one (which takes the thoughts that came before it)."""
    if out and out[-1]["role"] == "assistant" and not reasoning:
        return out[-1]
    turn: dict[str, Any] = {"role": "assistant", "content": None}
    if reasoning:
        turn["reasoning_content"] = "\n\n".join(reasoning)
        reasoning.clear()
    out.append(turn)
    return turn


def _reasoning_text(item: dict[str, Any], where: str) -> list[str]:
    """A reasoning item's readable text (its raw content, else its summary); the
    encrypted content means nothing to a local model."""
    for key in ("content", "summary"):
        parts = item.get(key)
        if parts is None:
            continue
        if not isinstance(parts, list):
            raise bad(f"{where}.{key}", "expected a list of text parts")
        texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"),
                                                                               str)]
        if texts:
            return ["\n\n".join(texts)]
    return []


def _content(content: Any, where: str, *, required: bool = False
             ) -> tuple[str, list[dict[str, Any]]]:
    """A message's (or a tool output's) text, and its images as chat image parts."""
    if content is None and not required:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise bad(where, "expected a string or a list of content parts")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad(at, "expected a content part {type, ...}")
        kind = part["type"]
        if kind in TEXT_PARTS:
            key = "refusal" if kind == "refusal" else "text"
            if not isinstance(part.get(key), str):
                raise bad(f"{at}.{key}", "expected a string")
            texts.append(part[key])
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise bad(f"{at}.image_url", "expected an image URL or data: URL (uploaded "
                                             "files are not kept by this gateway)")
            image = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            images.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            raise bad(f"{at}.type", "file inputs are not supported by this gateway; send the "
                                    "file's text as input_text", "unsupported_content")
        else:
            raise bad(f"{at}.type", f"unknown content part {kind!r}")
    return "\n\n".join(texts), images


def _user_content(text: str, images: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if not images:
        return text
    return ([{"type": "text", "text": text}] if text else []) + images


def _tools(raw: Any) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str]]]:
    if raw is None:
        return [], {}
    if not isinstance(raw, list):
        raise bad("tools", "expected a list of tools")
    out: list[dict[str, Any]] = []
    names: dict[str, tuple[str, str]] = {}
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise bad(where, "expected a tool object {type, ...}")
        if tool["type"] == "function":
            out.append(_function(tool, where))
        elif tool["type"] == "namespace":
            ns, inner = tool.get("name"), tool.get("tools")
            if not isinstance(ns, str) or not ns:
                raise bad(f"{where}.name", "expected the namespace's name")
            if not isinstance(inner, list):
                raise bad(f"{where}.tools", "expected a list of function tools")
            for j, t in enumerate(inner):
                at = f"{where}.tools[{j}]"
                if not isinstance(t, dict) or t.get("type", "function") != "function":
                    log.debug("dropping non-function tool %s in namespace %s", j, ns)
                    continue
                fn = _function(t, at)
                name = fn["function"]["name"]
                flat = f"{ns}{NAMESPACE_SEP}{name}"
                fn["function"]["name"] = flat
                names[flat] = (ns, name)
                out.append(fn)
        else:  # hosted tools (web_search, file_search, ...) and custom ones: left out
            log.debug("dropping %s tool the fleet cannot run", tool["type"])
    return out, names


def _function(tool: dict[str, Any], where: str) -> dict[str, Any]:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name", "expected the function's name")
    params = tool.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise bad(f"{where}.parameters", "expected a JSON schema object")
    fn: dict[str, Any] = {"name": name, "parameters": params}
    if isinstance(tool.get("description"), str):
        fn["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        fn["strict"] = tool["strict"]
    return {"type": "function", "function": fn}


def _tool_choice(choice: Any, names: dict[str, tuple[str, str]],
                 tools: list[dict[str, Any]]) -> Any:
    if choice is None or choice in ("auto", "required", "none"):
        return choice
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise bad("tool_choice.name", "expected the function's name")
        ns = choice.get("namespace")
        if isinstance(ns, str) and ns:
            name = f"{ns}{NAMESPACE_SEP}{name}"
        if name not in {t["function"]["name"] for t in tools}:
            raise bad("tool_choice.name", f"no function named {name!r} in 'tools'")
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        mode = choice.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise bad("tool_choice.mode", "expected 'auto' or 'required'")
        allowed = {t.get("name") for t in choice.get("tools") or [] if isinstance(t, dict)}
        tools[:] = [t for t in tools if t["function"]["name"] in allowed
                    or names.get(t["function"]["name"], ("", ""))[1] in allowed]
        return mode
    if isinstance(kind, str):  # a hosted tool's choice: those tools are left out
        return "auto"
    raise bad("tool_choice", "expected 'auto', 'none', 'required' or {type: function, name}")


def _format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise bad("text", "expected an object {format: {type, ...}}")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise bad("text.format.schema", "expected a JSON schema object")
        name = fmt.get("name")
        if not isinstance(name, str) or not name:
            raise bad("text.format.name", "expected the schema's name")
        spec: dict[str, Any] = {"name": name, "schema": schema}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        return {"type": "json_schema", "json_schema": spec}
    raise bad("text.format.type", "expected 'text', 'json_object' or 'json_schema'")


def _thinking(reasoning: Any) -> bool | None:
    """Whether a thinking model should think: only when the effort says so. A model's
    thinking is on or off, so 'minimal' (a few reasoning tokens at OpenAI) is off."""
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise bad("reasoning", "expected an object {effort?, summary?}")
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if effort not in ("none", "minimal", "low", "medium", "high", "xhigh"):
        raise bad("reasoning.effort", "expected none, minimal, low, medium, high or xhigh")
    return effort not in ("none", "minimal")


def _echo(body: dict[str, Any]) -> dict[str, Any]:
    """The request's settings as a response object repeats them."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "temperature": body.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": "disabled",  # the neuron refuses a prompt too long; nothing is cut
        "user": body.get("user"),
    }
