"""Pure statistics for the benchmark: percentiles, medians and ratios, with no I/O.

Every figure the report shows is a median of interleaved repetitions or a percentile of many
samples, so these few functions decide what the numbers mean; they are tested on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks, as numpy's default."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def paired_ratios(values: Sequence[float], bases: Sequence[float]) -> dict[str, float] | None:
    """The median of `values[i] / bases[i]`, with its quartiles, over rounds measured side by side.

    Two stacks' rounds alternate, so round i of each saw the same moment of the machine; their ratio
    cancels what the moment did to both, where a ratio of the two medians would not. The quartiles say
    how far one ratio wanders: a change smaller than their spread needs more rounds to be seen.
    None when no pair has a positive base.
    """
    found = [value / base for value, base in zip(values, bases, strict=True) if base > 0]
    if not found:
        return None
    return {"median": median(found), "p25": percentile(found, 25), "p75": percentile(found, 75),
            "rounds": float(len(found))}


def ratio(value: float | None, base: float | None) -> float | None:
    """`value / base`, or None when either is missing or the base is zero: no figure rather than a wrong one."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def per_thousand(cpu_seconds: float, chunks: int) -> float | None:
    """CPU seconds per 1,000 chunks; None when nothing was relayed."""
    if chunks <= 0:
        return None
    return cpu_seconds * 1000 / chunks
