"""Agent sessions for bench/fleet_agents.py: conversations shaped like the recorded Claude
Code and Codex requests (shared/fixtures), replayed concurrently through a gateway.

Every session of one agent kind shares that kind's long system prompt and tools (Claude
Code's came to ~21k tokens; Codex's ~10k), opens with a task of its own, then appends a
tool result or a user message each turn while its history grows; between turns the agent
"thinks" (runs the tool). A session sends its client's own session key (Claude Code:
`x-claude-code-session-id`; Codex: `session-id` and `prompt_cache_key`). Past
`max_prompt_tokens` a session compacts, as the agents do: it starts again from the shared
prefix with a new task (its cache is lost, on any policy).

Text is words of a fixed vocabulary from a seeded generator: the same run sends the same
bytes for either policy. Sizes are in tokens (4 characters each); the engine's own count
comes back in each reply's usage.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

WORDS = (
    "the", "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from",
    "this", "that", "file", "line", "test", "code", "function", "value", "error", "return",
    "import", "class", "def", "self", "path", "read", "write", "call", "list", "name",
    "type", "data", "result", "check", "build", "run", "make", "use", "set", "get", "add",
    "update", "change", "fix", "module", "config", "output", "input", "string", "number",
    "case", "step", "next", "then", "when", "if", "not", "all", "each", "other", "more",
    "new", "old", "first", "last", "only", "also", "just", "same", "many", "some", "into",
    "over"
)
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Shape:
    prefix_tokens: int  # the agent kind's system prompt + tools, shared by its sessions
    task_tokens: int  # a session's first user message
    append_tokens: int  # what each later turn appends (median; a tool's output)
    answer_tokens: int  # max_tokens of every reply
    turns: int  # turns per session
    think_secs: float  # mean pause between a reply and the session's next turn
    max_prompt_tokens: int  # past this, the session compacts and starts again

    def scaled(self, factor: float, **fixed: Any) -> Shape:
        """Every size divided by `factor` (turns and times as they are, or `fixed`)."""
        sizes = {k: max(1, round(getattr(self, k) / factor)) for k in (
            "prefix_tokens", "task_tokens", "append_tokens", "answer_tokens",
            "max_prompt_tokens")}
        return replace(self, **{**sizes, **fixed})


# Published shapes (shared/BENCH.md): Claude Code's recorded request (~21k tokens of system
# and 24 tools); TraceLab's 357k steps of coding agents: ~6.6k tokens appended a step (a
# median of ~750 in long sessions), 523 generated a step; contexts up to the model's window.
CLAUDE_CODE = Shape(prefix_tokens=21_000, task_tokens=300, append_tokens=750,
                    answer_tokens=523, turns=12, think_secs=40.0, max_prompt_tokens=120_000)


@dataclass(frozen=True)
class Kind:
    name: str  # claude | codex
    system: str
    tools: list[dict[str, Any]]

    def headers(self, session: str) -> dict[str, str]:
        if self.name == "claude":
            return {"x-claude-code-session-id": session}
        return {"session-id": session}

    def body_keys(self, session: str) -> dict[str, Any]:
        return {"prompt_cache_key": session} if self.name == "codex" else {}


def words(rng: random.Random, tokens: int) -> str:
    out, size = [], 0
    while size < tokens * CHARS_PER_TOKEN:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def kinds(shape: Shape, seed: int = 7) -> list[Kind]:
    """Claude Code-like (the whole prefix) and Codex-like (half of it, as recorded)."""
    out = []
    for name, share in (("claude", 1.0), ("codex", 0.5)):
        rng = random.Random(f"{seed}:{name}")
        total = max(8, int(shape.prefix_tokens * share))
        n_tools = 8
        per_tool = max(1, int(total * 0.7) // n_tools)
        tools = [{"type": "function", "function": {
            "name": f"{name}_tool_{i}", "description": words(rng, per_tool),
            "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}}}}
            for i in range(n_tools)]
        out.append(Kind(name, words(rng, total - per_tool * n_tools), tools))
    return out


@dataclass
class Turn:
    session: str
    kind: str
    turn: int
    started: float  # seconds since the run began
    node: str = ""
    status: int = 0
    code: str = ""
    ttft: float | None = None  # seconds to the first content
    secs: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    own: int = 0  # tokens of this session's previous prompt (0: the first, or compacted)
    prefix: int = 0  # tokens of its agent kind's shared system + tools
    refusals: int = 0  # 503s before it was served (the agent retried)


@dataclass
class Session:
    id: str
    kind: Kind
    shape: Shape
    seed: int
    turns: list[Turn] = field(default_factory=list)

    def first_messages(self, rng: random.Random) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.kind.system},
                {"role": "user", "content": f"Task {self.id}: " +
                 words(rng, self.shape.task_tokens)}]


async def run_session(http: aiohttp.ClientSession, url: str, model: str, s: Session,
                      t0: float, *, start_after: float = 0.0, retries: int = 200,
                      time_scale: float = 1.0, stop: asyncio.Event | None = None) -> None:
    """Send `s`'s turns one after another (think time between), recording each. A 503 is
    retried as the agents do (after Retry-After, at most `retries` times)."""
    rng = random.Random(s.seed)
    await asyncio.sleep(start_after / time_scale)
    messages = s.first_messages(rng)
    prefix_chars = len(s.kind.system) + len(json.dumps(s.kind.tools))
    prev_prompt = 0  # tokens of this session's previous prompt (0: none, or compacted)
    for i in range(s.shape.turns):
        if stop is not None and stop.is_set():
            return
        t = Turn(s.id, s.kind.name, i, time.monotonic() - t0)
        body = {"model": model, "messages": messages, "tools": s.kind.tools,
                "max_tokens": s.shape.answer_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, **s.kind.body_keys(s.id)}
        answer = await _send(http, url, body, s.kind.headers(s.id), t, retries, time_scale)
        chars = sum(len(m["content"]) for m in messages) + len(json.dumps(s.kind.tools))
        if t.prompt_tokens:
            t.own, t.prefix = prev_prompt, int(t.prompt_tokens * prefix_chars / chars)
            prev_prompt = t.prompt_tokens
        s.turns.append(t)
        if t.status != 200:
            return
        appended = words(rng, _append(rng, s.shape))
        messages = [*messages, {"role": "assistant", "content": answer},
                    {"role": "user", "content": appended}]
        if t.prompt_tokens + s.shape.append_tokens * 2 > s.shape.max_prompt_tokens:
            messages, prev_prompt = s.first_messages(rng), 0  # compaction: a new window
        await asyncio.sleep(rng.expovariate(1 / s.shape.think_secs) / time_scale)


def _append(rng: random.Random, shape: Shape) -> int:
    # Long-tailed, with the shape's median (TraceLab: a median of ~750, a P99 of 10-13k).
    return max(1, int(shape.append_tokens * rng.lognormvariate(0, 0.9)))


async def _send(http: aiohttp.ClientSession, url: str, body: dict, headers: dict,
                t: Turn, retries: int, time_scale: float) -> str:
    start = time.monotonic()
    for _ in range(retries + 1):
        try:
            return await _attempt(http, url, body, headers, t, start)
        except _Refused as refused:
            await asyncio.sleep(refused.retry_after / time_scale)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            # A pooled keep-alive connection the server closed as it was reused: again.
            t.code = "connection_reset"
            continue
    return ""


class _Refused(Exception):
    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after


async def _attempt(http: aiohttp.ClientSession, url: str, body: dict, headers: dict,
                   t: Turn, start: float) -> str:
    async with http.post(url, json=body, headers=headers) as resp:
        t.status, t.node = resp.status, resp.headers.get("X-Cortex-Node", "")
        if resp.status == 503:
            t.refusals += 1
            t.code = _code(await resp.read())
            raise _Refused(float(resp.headers.get("Retry-After", "1")))
        if resp.status != 200:
            t.code = _code(await resp.read())
            return ""
        text = await _read_stream(resp, t, start)
        t.secs = time.monotonic() - start
        return text


async def _read_stream(resp: aiohttp.ClientResponse, t: Turn, start: float) -> str:
    parts = []
    async for raw in resp.content:
        line = raw.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("error"):
            t.status, t.code = 500, str(chunk["error"].get("code"))
            continue
        for c in chunk.get("choices") or []:
            text = (c.get("delta") or {}).get("content")
            if text:
                if t.ttft is None:
                    t.ttft = time.monotonic() - start
                parts.append(text)
        usage = chunk.get("usage")
        if usage:
            t.prompt_tokens = usage.get("prompt_tokens", 0)
            t.completion_tokens = usage.get("completion_tokens", 0)
            t.cached_tokens = (usage.get("prompt_tokens_details") or {}).get(
                "cached_tokens", 0) or 0
    return "".join(parts)


def _code(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"].get("code"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "not-an-envelope"
