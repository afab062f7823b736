"""The one percentile of this repository: nearest rank, as every benchmark and the monitor use.

Nothing here touches a socket. ``percentile(values, fraction)`` is the smallest value such
that at least ``fraction`` of the values are at or below it (the nearest-rank method):
sort the n values, take the one at rank ceil(fraction * n), counting from 1. So the p50 of
[1, 2, 3, 4] is 2, the p99 of 1..100 is 99, and every result is a value that was measured,
never an interpolation between two of them. No values give 0.0, so that an empty sample
prints as a number instead of failing a report.

    python -c "from cluster_patterns.stats import percentile; print(percentile([3, 1, 2], 0.5))"
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` for ``fraction`` in [0, 1]; 0.0 when empty."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    ordered = sorted(values)
    if not ordered:
        return 0.0
    # Rounded first, so that float error (0.1 * 30 = 3.0000000000000004) cannot skip a rank.
    rank = max(1, math.ceil(round(fraction * len(ordered), 9)))
    return float(ordered[rank - 1])
