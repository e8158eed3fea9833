"""The figures every benchmark prints: percentiles and medians of its samples."""

from __future__ import annotations

import statistics


def pct(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank; NaN when there are none."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
