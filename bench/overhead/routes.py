"""Phase 2b: each data-plane route through the gateway, beside direct and the floor."""

from __future__ import annotations

import json
import random

import aiohttp
from figures import med, pct

from overhead.targets import HERE, MSG, Target, ms, one_call


def _agent_body() -> dict:
    """The bytes of a real agent turn: Claude Code 2.1.197's recorded 82 KB request (system
    blocks, 24 tools, the conversation), sent as a non-streaming chat body."""
    data = HERE.parent / "files/agents/tests/data/claude_code_2.1.197_request.json"
    body = json.loads(data.read_text())
    body.pop("stream", None)
    return dict(body, model="fake")


# label: (path, body)
ROUTE_BODIES = {
    "/v1/chat/completions": ("/v1/chat/completions", {"model": "fake", "messages": MSG}),
    "chat, 82 KB agent turn": ("/v1/chat/completions", _agent_body()),
    "/v1/messages": ("/v1/messages", {"model": "fake", "max_tokens": 16, "messages": MSG}),
    "/v1/responses": ("/v1/responses", {"model": "fake", "max_output_tokens": 16,
                                        "input": "Hi"}),
    "/v1/embeddings": ("/v1/embeddings", {"model": "fake", "input": ["Hi there"]}),
}


TRANSLATED = ("/v1/messages", "/v1/responses")  # served by translating to chat completions


async def routes(targets: list[Target], calls: int) -> None:
    """Non-streaming P50 per route; /v1/messages and /v1/responses exist only on the
    gateway (their direct baseline is the chat call they become)."""
    by = {t.name: t for t in targets}
    plan = []
    for label, (path, body) in ROUTE_BODIES.items():
        for name in ("direct", "floor", "gateway"):
            if path in TRANSLATED and name != "gateway":
                continue
            t = by[name]
            plan.append((label, name, Target(t.name, t.host, t.port, t.model, t.headers, path),
                         json.dumps(body).encode()))
    ss = {(path, name): aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
          for path, name, _, _ in plan}
    got: dict[tuple[str, str], list[float]] = {(p, n): [] for p, n, _, _ in plan}
    errors: dict[tuple[str, str], int] = dict.fromkeys(got, 0)
    try:
        for k in range(calls + 20):
            random.shuffle(plan)
            for path, name, t, body in plan:
                try:
                    took, _ = await one_call(ss[(path, name)], t, body)
                except Exception:
                    errors[(path, name)] += 1
                    continue
                if k >= 20:  # the first 20 warm up
                    got[(path, name)].append(took)
    finally:
        for s in ss.values():
            await s.close()
    print(f"\n== routes: {calls} non-streaming calls each, one at a time, shuffled ==")
    print(f"{'route':<22} {'target':<8} {'P50 ms':>8} {'P99 ms':>8} {'added P50':>10} "
          f"{'errors':>7}")
    for label, (path, _) in ROUTE_BODIES.items():
        base = med(got[("/v1/chat/completions" if path in TRANSLATED else label, "direct")])
        for name in ("direct", "floor", "gateway"):
            if (label, name) not in got:
                continue
            v = got[(label, name)]
            added = "" if name == "direct" else f"{(med(v) - base) * 1000:+9.2f}"
            print(f"{label:<22} {name:<8} {ms(med(v)):>8} {ms(pct(v, 0.99)):>8} {added:>10} "
                  f"{errors[(label, name)]:>7}")
