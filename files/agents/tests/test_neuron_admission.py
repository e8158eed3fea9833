"""Tables for the neuron's scheduling policy: admission (admission.py) and the slot a new
sequence gets (slots.py), then the scheduler's log line naming the rule that picked."""

from __future__ import annotations

import logging

import pytest

from cortex.core.errors import BadRequest, TooManyRequests, Unavailable
from cortex.neuron.admission import Admission, Occupancy
from cortex.neuron.config import AdmissionConfig
from cortex.neuron.slots import FreeSlot, choose

LIMITS = AdmissionConfig(max_in_flight=0, max_queue_depth=2, max_per_principal=2)

# (case, slots, occ, embed, principal) -> (error type or None, code, counted rejection)
ADMISSION = [
    ("a free slot", 2, Occupancy(), False, "a", None, None, None),
    ("slots full, queue has room", 2, Occupancy(running=2, queued=1), False, "", None, None, None),
    ("slots and queue full", 2, Occupancy(running=2, queued=2), False, "",
     Unavailable, "rate_limit_exceeded", "queue_full"),
    # A free slot is one more place: the queue may hold depth + free.
    ("queue full but a slot free", 2, Occupancy(running=1, queued=2), False, "", None, None, None),
    ("unloading", 2, Occupancy(closed=True), False, "", Unavailable, "model_unloading", None),
    ("unloading beats a full queue", 2, Occupancy(closed=True, running=2, queued=9), False, "",
     Unavailable, "model_unloading", None),
    ("chat on an embeddings-only model", 0, Occupancy(), False, "",
     BadRequest, "model_embeddings_only", None),
    ("embedding on an embeddings-only model", 0, Occupancy(), True, "", None, None, None),
    ("the account's third request", 2, Occupancy(by_principal=2), False, "a",
     TooManyRequests, "rate_limit_exceeded", "per_principal"),
    ("no account: no per-account cap", 2, Occupancy(by_principal=5), False, "", None, None, None),
    ("a full queue is refused before the account's cap", 2,
     Occupancy(running=2, queued=2, by_principal=2), False, "a",
     Unavailable, "rate_limit_exceeded", "queue_full"),
    ("embeddings queue: none running, depth + 1", 2, Occupancy(embeds_queued=2), True, "",
     None, None, None),
    ("embeddings queue full", 2, Occupancy(embedding=True, embeds_queued=2), True, "",
     Unavailable, "rate_limit_exceeded", "queue_full"),
    ("embeddings ignore the chat queue", 2, Occupancy(running=2, queued=2), True, "",
     None, None, None),
]


@pytest.mark.parametrize("case, slots, occ, embed, principal, error, code, reason", ADMISSION,
                         ids=[row[0] for row in ADMISSION])
def test_admission(case, slots, occ, embed, principal, error, code, reason):
    adm = Admission("m", LIMITS, slots)
    got = adm.refusal(occ, embed=embed, principal=principal)
    if error is None:
        assert got is None
        return
    assert type(got) is error and got.code == code
    assert adm.reason(got) == reason


def test_max_in_flight_below_the_slots_caps_the_free_places():
    adm = Admission("m", AdmissionConfig(max_in_flight=1, max_queue_depth=1), slots=4)
    assert adm.max_in_flight == 1
    assert adm.refusal(Occupancy(running=1, queued=0), embed=False, principal="") is None
    assert adm.refusal(Occupancy(running=1, queued=1), embed=False, principal="") is not None
    assert adm.retry_after(queued=3) == 8


def slot(n: int, match: int = 0, cached: int = 0, used: float = 0.0) -> FreeSlot:
    return FreeSlot(n, match, cached, used)


# (case, free slots, running) -> (slot, the rule's words)
SLOTS = [
    ("the longest cached prefix", [slot(0, 10, 12), slot(1, 80, 90), slot(2)], set(),
     1, "longest cached prefix 80"),
    ("equal prefixes: the least recently used", [slot(0, 80, 90, used=5),
                                                  slot(1, 80, 90, used=2)], set(),
     1, "longest cached prefix 80"),
    # Taking slot 0 would drop 100 cached tokens to reuse 8 (a shared template header).
    ("a shared header is not worth another conversation", [slot(0, 8, 108, used=5), slot(1)], set(),
     1, "least recently used"),
    ("dropping up to half of what is reused is", [slot(0, 40, 60), slot(1)], set(),
     0, "longest cached prefix 40"),
    ("nothing cached: the gap between two running slots", [slot(1, used=9), slot(3)], {0, 2},
     1, "gap between two running slots"),
    ("nothing cached: beside a running slot", [slot(1, used=9), slot(3, used=1)], {0},
     1, "beside a running slot"),
    ("nothing cached, nothing running: the least recently used",
     [slot(0, used=9), slot(1, used=3), slot(2, used=5)], set(), 1, "least recently used"),
]


@pytest.mark.parametrize("case, free, running, want, why", SLOTS, ids=[r[0] for r in SLOTS])
def test_slot_choice(case, free, running, want, why):
    got, rule = choose(free, running)
    assert got == want and why in rule


def test_the_scheduler_logs_the_rule_that_picked(neuron_factory, caplog):
    n = neuron_factory(parallel=2)
    n.load("file:tiny-hello")
    body = {"model": "file:tiny-hello", "max_tokens": 2,
            "messages": [{"role": "user", "content": "the capital of France is Paris " * 20}]}
    with caplog.at_level(logging.DEBUG, "cortex.neuron.scheduler"):
        for _ in range(2):
            assert n.post("/v1/chat/completions", body,
                          headers={"X-Helexa-Account-Id": "acme"}).status_code == 200
    lines = [r.getMessage() for r in caplog.records if "chosen" in r.getMessage()]
    assert "slot 0 chosen: no cache worth keeping; the least recently used" in lines[0]
    assert "slot 0 chosen: longest cached prefix" in lines[1] and "'acme'" in lines[1]
