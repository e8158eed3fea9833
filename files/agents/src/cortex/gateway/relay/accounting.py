"""A request's bill (`Tab`): opened by the data plane's prologue, settled exactly once.

The data plane closes every reply it sends, whatever happened (the whole body sent, the
client gone, an error, a worker stopped at its graceful timeout), and settles the request's
tab there: that is the one place where a request ends. Settling ends the neuron's part of
the exchange if it is still open, bills what `relay.sse.billed` says (the neuron's usage,
else what was relayed), records the metrics and the recent-requests line, and releases the
key's hold with what was spent.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from cortex.gateway.auth import Hold, Principal
from cortex.gateway.metrics import GatewayMetrics
from cortex.gateway.recent import Finished, RecentRequests
from cortex.gateway.relay.sse import Usage, billed

if TYPE_CHECKING:
    from cortex.gateway.relay.send import Exchange

log = logging.getLogger(__name__)


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A cheap upper-ish estimate of a neuron API body's prompt (4 characters a token): to
    hold against a cap, to refuse an oversize prompt early, and to bill a prompt whose
    stream broke before the neuron said its size."""
    chars = 0
    for m in body.get("messages") or []:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            chars += len(c)
        elif isinstance(c, list):
            chars += sum(len(p["text"]) for p in c
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    for key in ("prompt", "input"):  # completions; embeddings
        value = body.get(key)
        if isinstance(value, str):
            chars += len(value)
        elif isinstance(value, list):
            chars += sum(len(v) for v in value if isinstance(v, str))
    return chars // 4


class Ledger:
    """Where finished requests are written down: metrics, spend, recent requests."""

    def __init__(self, metrics: GatewayMetrics, recent: RecentRequests) -> None:
        self.metrics, self.recent = metrics, recent

    def open(self, path: str, principal: Principal, hold: Hold, started: float) -> Tab:
        return Tab(self, path, principal, hold, started)


class Tab:
    """One request's bill. `exchange` is the neuron's answer it is billed for (the relay's
    dispatch sets it), with `body`, what was sent (for a prompt estimate); `overhead`, the
    gateway's own time, once the route knows it."""

    __slots__ = ("body", "exchange", "hold", "ledger", "lost_work", "overhead", "path",
                 "principal", "settled", "started")

    def __init__(self, ledger: Ledger, path: str, principal: Principal, hold: Hold,
                 started: float) -> None:
        self.ledger, self.path, self.principal, self.hold = ledger, path, principal, hold
        self.started = started  # time.monotonic() when the request came in
        self.exchange: Exchange | None = None
        self.body: dict[str, Any] = {}
        self.overhead: float | None = None
        self.settled = False
        self.lost_work = False  # a neuron had the request; what it generated is unknown

    def lost(self, body: dict[str, Any]) -> None:
        """A neuron had the request (`body`) and stopped without saying what it generated:
        the request is billed its reservation, never nothing."""
        self.lost_work, self.body = True, body

    def attach(self, ex: Exchange, body: dict[str, Any]) -> None:
        self.exchange, self.body = ex, body
        if self.hold.stored:  # usage read mid-stream shrinks the hold at once
            ex.reading.on_usage = self.hold.known

    def settle(self) -> None:
        """Bill the request and write it down, once (later calls do nothing). A failure is
        logged, never raised: the reply has gone out (or was meant to)."""
        if self.settled:
            return
        self.settled = True
        try:
            self._settle()
        except Exception:
            log.exception("settling a finished request failed")
            if not self.hold.settled:
                self.hold.settle(0)

    def _settle(self) -> None:
        ex = self.exchange
        if ex is None:  # no neuron answered: nothing to bill, unless one had it
            bill = self._reserved() if self.lost_work else Usage(0, 0)
            if bill.total:
                km = self.ledger.metrics.key(self.principal.account_id, self.principal.key_id)
                km.spend.inc(bill.total)
                km.prompt.inc(bill.prompt_tokens)
                km.completion.inc(bill.completion_tokens)
            self.hold.settle(bill.total)
            return
        ex.end()
        reading, m = ex.reading, self.ledger.metrics
        bill = billed(reading, ex.answered, lambda: estimate_prompt_tokens(self.body))
        if self.lost_work and reading.usage is None:
            bill = self._reserved()
        if reading.error is not None and not ex.code:  # the neuron said why it failed
            ex.broke(ex.status if ex.status >= 400 else 500, reading.error)
        model, node = ex.model.public_id, ex.node.name
        tm = m.target(model, node)
        now = time.monotonic()
        tm.duration.observe(now - self.started)
        if self.overhead is not None:
            m.overhead_of(self.path).observe(self.overhead)
        if ex.first_chunk_at is not None:
            tm.ttft.observe(ex.first_chunk_at - self.started)
            decode = now - ex.first_chunk_at
            if bill.completion_tokens > 1 and decode > 0:
                tm.tok_s.observe(bill.completion_tokens / decode)
        if ex.status >= 400:
            m.errors.labels(model, node, ex.code or str(ex.status)).inc()
        if bill.prompt_tokens:  # the fleet's cache hit ratio: cached of prompt tokens
            m.cache_used(model, node, bill.prompt_tokens, bill.cached_tokens)
        if bill.total:
            tm.prompt_tokens.inc(bill.prompt_tokens)
            tm.completion_tokens.inc(bill.completion_tokens)
            km = m.key(self.principal.account_id, self.principal.key_id)
            km.spend.inc(bill.total)
            km.prompt.inc(bill.prompt_tokens)
            km.completion.inc(bill.completion_tokens)
        self.hold.settle(bill.total)
        self.ledger.recent.record(Finished(
            model=model, node=node, key_id=self.principal.key_id, status=ex.status,
            code=ex.code, prompt_tokens=bill.prompt_tokens,
            completion_tokens=bill.completion_tokens, started=self.started,
            first_chunk_at=ex.first_chunk_at, ended=now))

    def _reserved(self) -> Usage:
        """What the request was allowed to spend: a capped key's hold (its input and its
        output bound), else the prompt's estimate and the body's output bound."""
        prompt = estimate_prompt_tokens(self.body)
        if self.hold.held:
            return Usage(min(prompt, self.hold.held), max(0, self.hold.held - prompt))
        bound = self.body.get("max_tokens") or self.body.get("max_completion_tokens")
        return Usage(prompt, bound if type(bound) is int and bound > 0 else 0)
