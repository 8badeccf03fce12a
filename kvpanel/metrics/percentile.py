"""The one percentile of kvpanel: the panel's TTFT window and the benchmark's report agree.

Linear interpolation between the two nearest ranks, as numpy's default (method="linear"),
which LMCache's long_doc_qa and vLLM's benchmarks use: kvpanel's p50/p90 read the same as
theirs for the same samples, and a small window does not jump from sample to sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * min(100.0, max(0.0, q)) / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
