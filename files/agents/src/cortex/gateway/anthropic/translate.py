"""Anthropic Messages requests → OpenAI chat bodies, and OpenAI replies → Anthropic messages.

The wire contract: docs/api.md. The neuron speaks OpenAI with two extensions that this
relies on: `reasoning_content` (thinking) and the choice's `stop_reason` (the stop string
that ended the text, which finish_reason "stop" alone does not tell from EOS).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

from cortex.core.errors import BadRequest

log = logging.getLogger(__name__)

# Blocks of tools that only Anthropic's servers run (web search, code execution, MCP
# connectors): they cannot be replayed to a local model, so history drops them.
SERVER_BLOCKS = {"server_tool_use", "mcp_tool_use", "mcp_tool_result", "container_upload",
                 "redacted_thinking"}

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}


# Claude Code's first system block is a billing line with per-request values (2.1.197:
# `cc_version=2.1.197.<3 hex>`; older versions: `cch=<5 hex>`). Anything that changes
# ahead of the conversation defeats the neuron's prompt cache, so those values go.
BILLING_PREFIX = "x-anthropic-billing-header:"
_CC_VERSION = re.compile(r"(cc_version=\d+\.\d+\.\d+)\.[0-9A-Za-z]+")
_CCH = re.compile(r" ?cch=[0-9A-Za-z]*;?")


def normalize_billing(text: str) -> str:
    """A billing line without its per-request values; any other text as it is."""
    if not text.startswith(BILLING_PREFIX):
        return text
    line, nl, rest = text.partition("\n")
    return _CCH.sub("", _CC_VERSION.sub(r"\1", line)) + nl + rest


def bad(param: str, message: str, code: str = "invalid_request_body") -> BadRequest:
    return BadRequest(f"{param}: {message}", code=code, param=param)


# -- request -----------------------------------------------------------------------------
def to_openai(body: dict[str, Any], *, count_only: bool = False) -> dict[str, Any]:
    """The OpenAI chat body for an Anthropic request (count_only: no max_tokens needed)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "field required", "missing_model_field")
    out: dict[str, Any] = {"model": model}
    if not count_only:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise bad("max_tokens", "field required", "missing_max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise bad("max_tokens", "expected an integer of at least 1")
        out["max_tokens"] = max_tokens
        if body.get("stream") is True:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}
    system = _system_text(body.get("system"), "system")
    messages = _messages(body.get("messages"))
    # System turns in the history join the top-level system prompt: one leading message.
    system += [m["content"] for m in messages if m["role"] == "system"]
    messages = [m for m in messages if m["role"] != "system"]
    if system:
        messages.insert(0, {"role": "system", "content": "\n\n".join(system)})
    out["messages"] = messages
    _sampling(body, out)
    _output_format(body.get("output_config"), out)
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        _tool_choice(body.get("tool_choice"), out)
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    # Anthropic thinks only when asked; the neuron's chat template reads enable_thinking.
    out["enable_thinking"] = kind in ("enabled", "adaptive")
    ttl = _cache_ttl(body)
    if ttl:
        out["helexa_cache_ttl"] = ttl
    return out


CACHE_TTLS = {"5m": 300, "1h": 3600}  # cache_control's ttl values; absent: 5 minutes


def _cache_ttl(body: dict) -> int:
    """The longest `cache_control` ttl anywhere in the request, in seconds (0: none): the
    neuron keeps the prompt's cached blocks at least that long where its budget allows."""
    marks = [body.get("cache_control")]
    for part in (body.get("system"), body.get("tools")):
        if isinstance(part, list):
            marks += [b.get("cache_control") for b in part if isinstance(b, dict)]
    for m in body.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            marks += [b.get("cache_control") for b in content if isinstance(b, dict)]
    return max((CACHE_TTLS.get(c.get("ttl", "5m"), 300) for c in marks
                if isinstance(c, dict)), default=0)


def _sampling(body: dict, out: dict) -> None:
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad("stop_sequences", "expected a list of strings")
        out["stop"] = stops
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]


def _output_format(config: Any, out: dict) -> None:
    """Structured output (`output_config.format`, a JSON schema) as the neuron's
    `response_format`; `output_config.effort` needs nothing from a local model."""
    if config is None:
        return
    if not isinstance(config, dict):
        raise bad("output_config", "expected an object {format?, effort?}")
    fmt = config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(
            fmt.get("schema"), dict):
        raise bad("output_config.format", "expected {type: json_schema, schema: {...}}")
    out["response_format"] = {"type": "json_schema", "json_schema": {
        "name": "output", "schema": fmt["schema"], "strict": True}}


def _system_text(system: Any, where: str) -> list[str]:
    if system is None:
        return []
    if isinstance(system, str):
        return [normalize_billing(system)] if system else []
    if isinstance(system, list):
        out = []
        for i, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(
                    block.get("text"), str):
                raise bad(f"{where}[{i}]", "expected a text block {type: text, text}")
            out.append(normalize_billing(block["text"]))  # cache_control, citations: ignored
        return out
    raise bad(where, "expected a string or a list of text blocks")


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise bad("messages", "expected a non-empty list of {role, content}")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, "expected an object with role and content")
        role, content = m.get("role"), m.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise bad(f"{where}.content", "expected a string or a list of content blocks")
        if role == "user":
            out += _user(content, where)
        elif role == "assistant":
            out.append(_assistant(content, where))
        elif role == "system":
            out.append({"role": "system", "content": "\n\n".join(
                _system_text(content, f"{where}.content"))})
        else:
            raise bad(f"{where}.role", f"expected 'user' or 'assistant', got {role!r}")
    return out


def _user(blocks: list, where: str) -> list[dict[str, Any]]:
    """Tool results become `tool` messages (OpenAI wants them right after the calls); the
    rest of the turn follows as one user message."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, b in enumerate(_typed(blocks, f"{where}.content")):
        at = f"{where}.content[{j}]"
        if b["type"] == "tool_result":
            text, images = _tool_result(b, at)
            out.append({"role": "tool", "tool_call_id": str(b.get("tool_use_id", "")),
                        "content": text})
            parts += images  # a tool message holds text only: its images follow as user's
        elif b["type"] not in SERVER_BLOCKS and not b["type"].endswith("_tool_result"):
            parts.append(_part(b, at))
    if parts:
        out.append({"role": "user", "content": _content(parts)})
    elif not out:
        out.append({"role": "user", "content": ""})
    return out


def _assistant(blocks: list, where: str) -> dict[str, Any]:
    texts, thinking, calls = [], [], []
    for j, b in enumerate(_typed(blocks, f"{where}.content")):
        at = f"{where}.content[{j}]"
        if b["type"] == "text":
            texts.append(_str(b, "text", at))
        elif b["type"] == "thinking":
            thinking.append(_str(b, "thinking", at))  # the signature means nothing here
        elif b["type"] == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise bad(at, "a tool_use block needs an id and a name")
            calls.append({"id": b["id"], "type": "function", "function": {
                "name": b["name"], "arguments": json.dumps(b.get("input") or {})}})
        elif b["type"] not in SERVER_BLOCKS and not b["type"].endswith("_tool_result"):
            raise bad(f"{at}.type", f"{b['type']!r} blocks are not supported in an "
                                    "assistant turn")
    msg: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
    if thinking:
        msg["reasoning_content"] = "\n\n".join(thinking)
    if calls:
        msg["tool_calls"] = calls
        msg["content"] = msg["content"] or None
    return msg


def _typed(blocks: list, where: str) -> list[dict[str, Any]]:
    for j, b in enumerate(blocks):
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise bad(f"{where}[{j}]", "expected a content block {type, ...}")
    return blocks


def _str(block: dict, key: str, where: str) -> str:
    if not isinstance(block.get(key), str):
        raise bad(f"{where}.{key}", "expected a string")
    return block[key]


def _part(b: dict, where: str) -> dict[str, Any]:
    """One user content block as an OpenAI content part."""
    if b["type"] == "text":
        return {"type": "text", "text": _str(b, "text", where)}
    source = b.get("source") if isinstance(b.get("source"), dict) else {}
    if b["type"] == "image":
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        elif source.get("type") == "url" and isinstance(source.get("url"), str):
            url = source["url"]
        else:
            raise bad(f"{where}.source", "expected a base64 or url image source")
        return {"type": "image_url", "image_url": {"url": url}}
    if b["type"] == "document" and source.get("type") == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    raise bad(f"{where}.type", f"{b['type']!r} blocks are not supported by this gateway")


def _tool_result(b: dict, where: str) -> tuple[str, list[dict[str, Any]]]:
    content = b.get("content")
    images: list[dict[str, Any]] = []
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, part in enumerate(_typed(content, f"{where}.content")):
            p = _part(part, f"{where}.content[{k}]")
            if p["type"] == "text":
                texts.append(p["text"])
            else:
                images.append(p)
        text = "\n\n".join(texts)
    else:
        raise bad(f"{where}.content", "expected a string or a list of blocks")
    if b.get("is_error"):
        text = f"Error: {text}"  # OpenAI's tool message has no error flag: say it in words
    return text, images


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p["type"] == "text" for p in parts):
        return "\n\n".join(p["text"] for p in parts)
    return parts


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad("tools", "expected a list of {name, description?, input_schema}")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise bad(f"tools[{i}]", "expected {name, description?, input_schema}")
        if t.get("type") not in (None, "custom") and "input_schema" not in t:
            log.debug("dropping server tool %s (%s)", t["name"], t.get("type"))
            continue
        if not isinstance(t.get("input_schema"), dict):
            raise bad(f"tools[{i}].input_schema", "expected a JSON schema object")
        fn = {"name": t["name"], "parameters": t["input_schema"]}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, out: dict) -> None:
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise bad("tool_choice", "expected {type: auto|any|none} or {type: tool, name}")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False


# -- reply -------------------------------------------------------------------------------
def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_reason(finish: str | None, matched: Any) -> tuple[str, str | None]:
    """Anthropic's (stop_reason, stop_sequence) for an OpenAI finish_reason."""
    if finish == "stop" and isinstance(matched, str) and matched:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish or "stop", "end_turn"), None


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's `input` must be."""
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        parsed = None
    if isinstance(parsed, dict):
        return parsed
    log.warning("tool arguments are not a JSON object: %.200r", arguments)
    return {}


def usage(prompt_tokens: int, output_tokens: int, cached: int = 0) -> dict[str, int]:
    """Anthropic's usage: `input_tokens` are the prompt tokens the neuron did not have in
    its cache, `cache_read_input_tokens` those it reused (cache_control is not needed:
    the neuron reuses any shared prefix, and writes cost nothing extra)."""
    cached = min(max(cached, 0), prompt_tokens)
    return {"input_tokens": prompt_tokens - cached, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def cached_tokens(usage_: Any) -> int:
    """The prompt tokens the neuron reused, from an OpenAI usage object."""
    details = usage_.get("prompt_tokens_details") if isinstance(usage_, dict) else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) else 0


def to_anthropic(reply: dict[str, Any], model: str, *, thinking: bool) -> dict[str, Any]:
    """A whole OpenAI chat completion as an Anthropic message (thinking: show reasoning)."""
    choice = (reply.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if thinking and msg.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": msg["reasoning_content"],
                        "signature": ""})
    text = msg.get("content") or ""
    if msg.get("tool_calls"):
        text = text.rstrip()  # the newlines before and between calls, as streaming drops them
    if text.strip():
        content.append({"type": "text", "text": text})
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{uuid.uuid4().hex}",
                        "name": fn.get("name", ""), "input": tool_input(fn.get("arguments"))})
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"))
    u = reply.get("usage") or {}
    return {"id": message_id(), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": sequence,
            "usage": usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0),
                           cached_tokens(u))}
