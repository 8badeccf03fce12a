"""benchmarks/gpu/disk_summary.py: the disk tier's cost from a disk20b result."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "disk_summary", Path(__file__).parents[2] / "benchmarks" / "gpu" / "disk_summary.py"
)
assert spec and spec.loader
disk_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(disk_summary)


def mode(name: str, warmup_s: float, disk: dict | None) -> dict:
    return {
        "mode": name,
        "result": {"rounds": {"warmup": {"total_s": warmup_s, "mean_ttft_s": warmup_s / 2}}},
        "last_status": {"tiers": {"disk": disk} if disk is not None else {}},
    }


def test_ratio_and_write_rate_against_dd() -> None:
    doc = {
        "modes": [
            mode("kvpanel-cpu", 8.0, None),
            mode("kvpanel", 8.2, {"chunks": 3150, "dropped": 0, "write_bytes_per_s": 1.5e9}),
        ]
    }
    lines = disk_summary.summary(doc, dd_write_gbps=1.64)
    assert (
        lines[0].startswith("kvpanel-cpu: warm-up round 8.000 s, mean TTFT 4.000 s")
        and "no writes" in lines[0]
    )
    assert "3150 chunks, 0 dropped, write rate 1.50 GB/s = 0.91 x dd's 1.64 GB/s" in lines[1]
    assert lines[2] == "warm-up round with / without the disk tier: 1.025 x"


def test_a_failed_mode_gives_no_ratio() -> None:
    doc = {"modes": [{"mode": "kvpanel-cpu", "result": None, "last_status": None}]}
    doc["modes"].append(mode("kvpanel", 8.2, {"chunks": 3, "write_bytes_per_s": None}))
    lines = disk_summary.summary(doc, dd_write_gbps=1.64)
    assert len(lines) == 2 and "write rate not measured" in lines[1]
