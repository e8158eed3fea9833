"""Admission: whether a model takes one more request now, and the refusal if not.

A pure rule over what the scheduler holds (`Occupancy`), so that it is read, tested (a table in
test_neuron_admission.py) and changed in one place; the scheduler calls it under its lock.
Chat requests: up to `max_in_flight` on slots, then a queue of `max_queue_depth`.
Embedding requests need no slot: one runs between steps while the next wait in a queue of
their own, of the same depth. Each account holds at most `max_per_principal` requests of
either kind, running or waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

from cortex.core.errors import ApiError, BadRequest, TooManyRequests, Unavailable
from cortex.neuron.config import AdmissionConfig

PER_JOB_SECS = 2.0  # a rough time per request ahead, for Retry-After


@dataclass(frozen=True)
class Occupancy:
    """What the model holds when a request arrives."""

    closed: bool = False  # being unloaded
    running: int = 0  # chat requests on slots
    queued: int = 0  # chat requests waiting
    embedding: bool = False  # an embedding request running
    embeds_queued: int = 0
    by_principal: int = 0  # requests of the arriving one's account, running or waiting


class Admission:
    def __init__(self, model_id: str, limits: AdmissionConfig, slots: int) -> None:
        self.model_id = model_id
        self.limits = limits
        self.slots = slots
        self.max_in_flight = min(limits.max_in_flight or slots, slots)

    def refusal(self, occ: Occupancy, *, embed: bool, principal: str) -> ApiError | None:
        """None: admit it; else the error to answer with (its `code`, and for a full
        queue or account the reason counted in rejections: see `reason`)."""
        limits = self.limits
        if occ.closed:
            return Unavailable(f"model {self.model_id} is being unloaded",
                               code="model_unloading", retry_after=2)
        if embed:
            full = occ.embeds_queued >= limits.max_queue_depth + (not occ.embedding)
        else:
            if not self.slots:
                return BadRequest(f"model {self.model_id} is loaded for embeddings only; "
                                  "load it without embeddings_only to chat with it",
                                  code="model_embeddings_only", param="model")
            free = max(0, self.max_in_flight - occ.running)
            full = occ.queued >= limits.max_queue_depth + free
        if full:
            in_flight = occ.running + occ.embedding
            return Unavailable(
                f"model {self.model_id} is busy: {in_flight} running, "
                f"{occ.queued + occ.embeds_queued} queued (max_queue_depth="
                f"{limits.max_queue_depth}); retry shortly",
                code="rate_limit_exceeded", retry_after=self.retry_after(occ.queued))
        if principal and occ.by_principal >= limits.max_per_principal:
            return TooManyRequests(
                f"account {principal!r} already has {occ.by_principal} requests on "
                f"{self.model_id} (max_per_principal={limits.max_per_principal})",
                code="rate_limit_exceeded", retry_after=1)
        return None

    @staticmethod
    def reason(error: ApiError) -> str | None:
        """The rejection a refusal counts as (None: not one, e.g. an unloading model)."""
        if isinstance(error, TooManyRequests):
            return "per_principal"
        if error.code == "rate_limit_exceeded":
            return "queue_full"
        return None

    def retry_after(self, queued: int) -> int:
        return max(1, round(PER_JOB_SECS * (1 + queued) / max(1, self.max_in_flight)))
