"""Chat completions → Responses output items and `response` objects.

The pieces a response is made of (items, usage, the final status), shared by the whole
reply here and by the stream converter; pure data in and out.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from cortex.gateway.responses.translate import Plan


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def shell(plan: Plan, response_id: str, created_at: int, status: str) -> dict[str, Any]:
    """A response object without output or usage yet (what `response.created` carries)."""
    return {"id": response_id, "object": "response", "created_at": created_at,
            "status": status, "background": False, "error": None, "incomplete_details": None,
            "model": plan.model, "output": [], "previous_response_id": None,
            "service_tier": "default", "store": False, "usage": None, **plan.echo}


def usage(u: dict[str, Any] | None) -> dict[str, Any]:
    """Chat usage as Responses usage (cached = the prompt tokens the neuron reused)."""
    u = u or {}
    prompt, completion = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    thought = (u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": int(thought)},
            "total_tokens": prompt + completion}


def finish(response: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    """Set the response's final status from the chat finish_reason."""
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(
        finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    if not reason:
        response["completed_at"] = int(time.time())
    return response


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    # The neuron's thoughts are the raw reasoning: content, not a summary.
    return {"id": item_id, "type": "reasoning", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if text else [],
            "encrypted_content": None, "status": status}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [] if text is None else [text_part(text)]}


def call_item(item_id: str, call_id: str, name: str, arguments: str, names: dict,
              status: str = "completed") -> dict[str, Any]:
    item = {"id": item_id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}
    if name in names:  # a namespace's function, named as the client declared it
        item["namespace"], item["name"] = names[name]
    return item


def arguments_text(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {})


def to_response(reply: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """A whole chat completion as a Responses `response` object."""
    choice = (reply.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        output.append(reasoning_item(new_id("rs"), msg["reasoning_content"]))
    text = msg.get("content") or ""
    calls = msg.get("tool_calls") or []
    if calls:
        text = text.rstrip()  # the newlines before and between calls, as streaming drops them
    if text.strip():
        output.append(message_item(new_id("msg"), text))
    for call in calls:
        fn = call.get("function") or {}
        output.append(call_item(new_id("fc"), call.get("id") or new_id("call"),
                                fn.get("name", ""), arguments_text(fn.get("arguments")),
                                plan.names))
    if choice.get("finish_reason") == "length" and output:
        output[-1]["status"] = "incomplete"  # the item under way when the tokens ran out
    response = shell(plan, new_id("resp"), int(reply.get("created") or time.time()),
                     "completed")
    response["output"] = output
    response["usage"] = usage(reply.get("usage"))
    return finish(response, choice.get("finish_reason"))
