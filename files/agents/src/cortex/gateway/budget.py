"""What a capped key's request may spend: its input, counted from every field that reaches
the prompt, and its output, bounded by what the client asked, the model's limits and what
the key has left (the bound is written into the body the neuron gets, so it holds).

The gateway has no tokenizer (the model's lives on the neuron), so input is estimated: 4
characters a token for text (object keys too: a tool's schema is rendered as JSON), one
token for each entry of a token array, and a few for each object's markup. A request's
hold is settled with what the neuron says it used, so the estimate's error never outlives
the request that made it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cortex.gateway.catalogue import Catalogue, ModelRef
    from cortex.gateway.fleet import Fleet

# Fields that never reach the prompt (ids, switches, the output bounds themselves).
NOT_INPUT = frozenset({
    "model", "stream", "stream_options", "user", "metadata", "store", "service_tier",
    "prompt_cache_key", "safety_identifier", "previous_response_id", "max_tokens",
    "max_completion_tokens", "max_output_tokens", "n", "seed", "temperature", "top_p",
    "top_k", "min_p"})
MARKUP = 3  # tokens an object (a message, a part, a tool) adds to the prompt, about
# The output reserved, and written as the request's bound, when the client names none and
# neither models.toml (`limit`) nor a loaded replica (its n_ctx) tells the model's limits.
DEFAULT_OUTPUT = 4096


@dataclass(frozen=True)
class Ask:
    """What one request asks of its key's cap."""

    input: int  # estimated prompt tokens
    output: int | None = None  # the output bound the client named (None: none)
    fields: tuple[str, ...] = ()  # the body's output bounds, the first written if none is
    #                               named; () for a request that generates nothing
    ceiling: int = 0  # the output to reserve when the client names none (`Limits.fill`)
    binding: bool = True  # the ceiling must be written: the neuron would not apply it

    @property
    def generates(self) -> bool:
        return bool(self.fields)

    @property
    def want(self) -> int:
        """Tokens to hold if the key has them."""
        if not self.generates:
            return self.input
        return self.input + (self.output if self.output is not None else self.ceiling)

    @property
    def least(self) -> int:
        """Tokens the key must have left to be admitted: the prompt, and one more to
        generate."""
        return self.input + (1 if self.generates else 0)


def count_input(body: dict[str, Any]) -> int:
    """Estimated prompt tokens of every field of `body` that reaches the prompt: messages
    (tool calls and tool results included), Anthropic's `system`, Responses' `instructions`
    and `input`, tools, prompts and token arrays."""
    chars = tokens = 0
    stack: list[Any] = [v for k, v in body.items() if k not in NOT_INPUT]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is str:
            chars += len(node)
        elif kind is list:
            stack.extend(node)
        elif kind is dict:
            tokens += MARKUP
            for k, v in node.items():
                chars += len(k)
                stack.append(v)
        elif kind is int or kind is float:
            tokens += 1  # a token id, or a number rendered into the prompt
    return tokens + -(-chars // 4)


def _bound(value: Any) -> int | None:
    return value if type(value) is int and value >= 1 else None


def ask_for(body: dict[str, Any], fields: tuple[str, ...]) -> Ask:
    """The `Ask` of a request whose output is bounded by `fields` (() for none)."""
    named = [b for b in (_bound(body.get(f)) for f in fields) if b is not None]
    return Ask(count_input(body), min(named) if named else None, fields)


def clamp(body: dict[str, Any], ask: Ask, allowed: int | None) -> None:
    """Bound the output `body` asks for to `allowed` tokens (None: no bound to keep), in
    the field the client used, or in the dialect's own if it named none and the neuron
    would not stop there by itself."""
    if allowed is None or not ask.generates:
        return
    present = [f for f in ask.fields if body.get(f) is not None]
    if any(_bound(body[f]) is None for f in present):
        return  # a bad bound: the request is refused for it (400) before anything runs
    if present:
        for f in present:
            if body[f] > allowed:
                body[f] = allowed
    elif ask.binding or allowed < ask.ceiling:
        body[ask.fields[0]] = allowed


class Limits:
    """A model's output ceiling, for a request that names none: models.toml's
    `limit.output`, else its `limit.context` less the prompt, else the context a loaded
    replica reports (n_ctx) less the prompt, else DEFAULT_OUTPUT."""

    def __init__(self, catalogue: Catalogue, fleet: Fleet) -> None:
        self.catalogue, self.fleet = catalogue, fleet

    def fill(self, model: ModelRef, ask: Ask | int) -> Ask | int:
        if isinstance(ask, int) or not ask.generates or ask.output is not None:
            return ask
        entry = model.entry  # (resolved once, in the data plane's prologue)
        limit = entry.limit if entry else None
        if limit and limit.output:
            return replace(ask, ceiling=limit.output, binding=True)
        context = (limit.context if limit else None) or self._n_ctx(model.load_id)
        if context:  # the neuron stops at its context by itself
            return replace(ask, ceiling=max(1, context - ask.input), binding=False)
        return replace(ask, ceiling=DEFAULT_OUTPUT, binding=True)

    def _n_ctx(self, load_id: str) -> int:
        found = 0
        for node in list(self.fleet.nodes.values()):
            m = node.models.get(load_id)
            limit = m.info.get("limit") if m is not None else None
            if isinstance(limit, dict) and isinstance(limit.get("context"), int):
                found = max(found, limit["context"])
        return found
