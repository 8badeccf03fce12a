"""A disk cache written at TP=1 is never a hit at TP=2 (real vLLM on CPU, one process per rank):
a TP=2 slot holds both ranks' shards, so its bytes are not a TP=1 chunk's, and the fingerprint
(TP size, chunk bytes) keeps them apart."""

from __future__ import annotations

import pytest

from .conftest import prompt, rank_cores, run_engine

pytestmark = pytest.mark.vllm

MiB = 1 << 20
P = prompt(3, 600)


def test_disk_chunks_written_at_tp1_are_not_hits_at_tp2(models, tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    settings = {"cpu_bytes": 64 * MiB, "disk_path": str(disk), "disk_bytes": 256 * MiB}
    tp1 = run_engine(
        {"model": models["llama"], "settings": settings, "rounds": [[P]]}, tmp_path / "1"
    )
    assert tp1["rounds"][0]["tiers"]["disk"]["chunks"] >= 2  # P's two full chunks, on disk

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", rank_cores(2))  # one core per rank
    tp2 = run_engine(
        {
            "model": models["llama"],
            "settings": settings,
            "rounds": [[P], [P]],
            "engine_kwargs": {"tensor_parallel_size": 2, "distributed_executor_backend": "mp"},
        },
        tmp_path / "2",
    )
    first, second = tp2["rounds"]
    assert first["outputs"][0]["cached"] == 0, "a TP=1 chunk was served at TP=2"
    assert first["tiers"]["disk"]["hits"] == 0
    # Its own chunks are hits (CPU), with the recompute's greedy output.
    assert second["outputs"][0]["cached"] == 512
    assert second["outputs"][0]["tokens"] == first["outputs"][0]["tokens"]
    # Both layouts' chunks now sit side by side in the disk tier.
    assert len(second["disk_files"]) >= 2 * len(tp1["rounds"][0]["disk_files"])
