"""The gateway's metrics buffer (cortex.gateway.metrics.Buffer): what it adds up and flushes
is what prometheus-client would have recorded change by change."""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from cortex.gateway.metrics import GatewayMetrics


def _samples(m: GatewayMetrics) -> dict[tuple, float]:
    """Every non-zero sample (a target's children are made together, used or not)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in m.registry.collect() for s in family.samples
            if s.value and not s.name.endswith("_created")}


changes = st.lists(st.tuples(st.sampled_from(["duration", "ttft", "overhead", "spend"]),
                             st.sampled_from(["a", "b"]),
                             st.floats(0, 200, allow_nan=False)), max_size=40)


@settings(max_examples=100, deadline=None)
@given(changes=changes)
def test_buffered_changes_add_up_to_the_direct_ones(changes):
    buffered, direct = GatewayMetrics(), GatewayMetrics()
    for kind, label, value in changes:
        if kind == "overhead":
            buffered.overhead_of(label).observe(value)
            direct.overhead.labels(label).observe(value)
        elif kind == "spend":
            buffered.key("acme", label).spend.inc(value)
            direct.spend.labels("acme", label).inc(value)
        else:
            getattr(buffered.target("m", label), kind).observe(value)
            getattr(direct, kind).labels("m", label).observe(value)
    got, want = _samples(buffered), _samples(direct)  # (a collection flushes first)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-9 * max(1.0, abs(v)), k


def test_no_change_is_lost_or_applied_twice_across_threads():
    m = GatewayMetrics()
    requests = m.target("m", "n1").requests
    stop = threading.Event()

    def flusher() -> None:
        while not stop.is_set():
            m.flush()

    def requester() -> None:
        for _ in range(5000):
            requests.inc()

    threads = [threading.Thread(target=flusher) for _ in range(2)]
    threads += [threading.Thread(target=requester) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads[2:]:
        t.join()
    stop.set()
    for t in threads[:2]:
        t.join()
    assert m.registry.get_sample_value("cortex_requests_total",
                                       {"model": "m", "node": "n1"}) == 20000
