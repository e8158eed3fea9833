"""Renders a model's own chat template (GGUF `tokenizer.chat_template`) safely.

Templates come from model files, i.e. from strangers: they run in jinja2's sandbox, with
the few helpers Hugging Face templates expect. The sandbox lets a template change lists it
builds (Kimi K2's keep a queue of call ids with `append`/`pop`); what it is given is this
request's own copy, so nothing it changes outlives the render.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from cortex.core.errors import BadRequest
from cortex.neuron import special_tokens

# Used when a GGUF carries no template: ChatML is what most small instruct models expect.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TemplateRaised(Exception):
    """The template called raise_exception(): the conversation is not one it accepts."""


def _raise(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False,
            separators: Any = None, sort_keys: bool = False) -> str:
    seps = tuple(separators) if separators else None
    text = json.dumps(value, indent=indent, ensure_ascii=False, separators=seps,
                      sort_keys=sort_keys)
    if ensure_ascii and not (special_tokens.OPEN in text or special_tokens.CLOSE in text):
        # (escaped, the fences around special-token text would be lost)
        text = json.dumps(value, indent=indent, ensure_ascii=True, separators=seps,
                          sort_keys=sort_keys)
    return text


def now() -> datetime:
    """The date templates print (`strftime_now`); tests fix it."""
    return datetime.now()


@lru_cache(maxsize=32)
def _compile(source: str):
    env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                               extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: now().strftime(fmt)
    return env.from_string(source)


def render(template: str | None, messages: list[dict[str, Any]], *, bos_token: str = "",
           eos_token: str = "", tools: list[dict] | None = None,
           add_generation_prompt: bool = True, **extra: Any) -> str:
    try:
        return _compile(template or CHATML).render(
            messages=messages, tools=tools or None, bos_token=bos_token, eos_token=eos_token,
            add_generation_prompt=add_generation_prompt, **extra)
    except TemplateRaised as exc:
        raise BadRequest(f"the model's chat template rejected these messages: {exc}",
                         code="invalid_messages", param="messages") from None
    except TemplateError as exc:
        raise BadRequest(f"the model's chat template failed on these messages: {exc}",
                         code="chat_template_error", param="messages") from None
