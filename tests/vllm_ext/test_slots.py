"""PoolSlots' rank report: throttled, and never left unwritten when the engine stops stepping."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from kvpanel.cache.host_pool import read_rank_reports
from kvpanel.vllm_ext import slots as slots_module
from kvpanel.vllm_ext.slots import PoolSlots


def load_bytes(directory: Path) -> int:
    reports = read_rank_reports(directory)
    return sum(r["transfers"]["load_bytes"] for r in reports) if reports else -1  # type: ignore[index]


def test_a_held_back_report_is_written_without_another_engine_step(tmp_path: Path) -> None:
    mapper = SimpleNamespace(directory=tmp_path, slot_bytes=1024)
    pool = PoolSlots(mapper, rank=1, ranks=2, slot_bytes=1024)  # type: ignore[arg-type]
    pool.report_engine_kv_bytes(4096)
    pool.publish()  # the first step: written at once
    assert load_bytes(tmp_path) == 0
    pool.record_transfer(512, 0.001, load=True, host_s=0.0001)
    pool.publish()  # within the throttle: held back ...
    assert load_bytes(tmp_path) == 0
    # ... and the engine never steps again (its last request finished): a timer writes it.
    deadline = time.monotonic() + 5 * slots_module._REPORT_S + 2
    while load_bytes(tmp_path) != 512 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert load_bytes(tmp_path) == 512
    assert read_rank_reports(tmp_path)[0]["engine_kv_bytes"] == 4096
