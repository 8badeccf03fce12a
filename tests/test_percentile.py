"""One percentile: the status snapshot's TTFT and the benchmark's report agree (numpy's linear)."""

from __future__ import annotations

import math

import pytest

from kvpanel.bench import result
from kvpanel.metrics import snapshot

CASES = [(0, 0.1), (50, 0.25), (90, 0.37), (99, 0.397), (100, 0.4)]


@pytest.mark.parametrize(("q", "want"), CASES)
def test_snapshot_and_bench_percentiles_agree(q: float, want: float) -> None:
    values = [0.4, 0.1, 0.3, 0.2]
    assert snapshot.percentile(values, q) == pytest.approx(want)
    assert result.percentile(values, q) == pytest.approx(want)


def test_no_values() -> None:
    assert snapshot.percentile([], 50) is None
    assert math.isnan(result.percentile([], 50))
