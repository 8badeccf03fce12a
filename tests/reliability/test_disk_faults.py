"""Disk tier faults: a full filesystem, and a chunk file claiming another model's fingerprint.

Truncated and bit-flipped files inside real vLLM are covered by
tests/vllm_ext/test_engine_e2e.py::test_corrupt_or_truncated_disk_files_are_misses_and_removed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.disk_tier import DiskTier
from kvpanel.cache.keys import ChunkKey, Fingerprint

from .conftest import CHUNK, MiB, prompt, run_engine, start, tier_status, tokens, validate_disk_dir


def test_disk_full_store_level(tmpfs):
    """ENOSPC on a 3 MiB tmpfs: the tier reports full/unhealthy, refuses, leaves no temp file."""
    root = tmpfs("3m")
    fp = Fingerprint("reliability/full", "bfloat16", "test", 16, 256, CHUNK)
    tier = DiskTier(root, fp, 100 * MiB)  # configured far beyond what the filesystem has
    try:
        results = [
            tier.put(ChunkKey(i.to_bytes(16, "little")), torch.ones(CHUNK, dtype=torch.uint8))
            for i in range(20)
        ]
        stats = tier.stats()
        assert results[0] and not all(results)
        assert stats.note == "full" and not stats.healthy and stats.errors >= 1
        assert not tier.accepts()  # stops admitting instead of retrying every chunk
        assert not tier.put(ChunkKey(b"x" * 16), torch.ones(CHUNK, dtype=torch.uint8))
        valid, temps = validate_disk_dir(root)
        assert valid == sum(results) and temps == []
    finally:
        tier.close()


def test_foreign_fingerprint_header_under_this_models_dir(tmp_path):
    """Store level: a file named like our chunk whose header names another model is dropped."""
    ours = Fingerprint("reliability/a", "bfloat16", "test", 16, 256, 4096)
    theirs = Fingerprint("reliability/b", "bfloat16", "test", 16, 256, 4096)
    k = ChunkKey(bytes(range(16)))
    tier = DiskTier(tmp_path, ours, 1 * MiB)
    tier.close()
    payload = memoryview(bytes(4096))
    fmt.write_chunk(fmt.chunk_path(tmp_path / ours.hex(), k), theirs.digest(), k, payload)
    tier = DiskTier(tmp_path, ours, 1 * MiB)
    try:
        assert not tier.contains(k) and tier.stats().errors == 1
        assert not fmt.chunk_path(tmp_path / ours.hex(), k).exists()
    finally:
        tier.close()


@pytest.mark.vllm
def test_foreign_fingerprint_chunk_in_real_vllm(models, tmp_path):
    """Another model's KV, renamed to this model's chunk key and header key (valid checksum,
    other model's fingerprint) under this model's dir: miss, file dropped, output = recompute."""
    p = prompt(0, 600)
    root = tmp_path / "disk"
    settings = {"cpu_bytes": 64 * MiB, "disk_path": str(root), "disk_bytes": 256 * MiB}
    ref = run_engine(
        {"model": models["llama"], "settings": settings, "rounds": [[p]]}, tmp_path / "a"
    )
    run_engine(
        {"model": models["llama-other"], "settings": settings, "rounds": [[p]]}, tmp_path / "b"
    )
    dirs = {
        d: Fingerprint.from_json((d / "fingerprint.json").read_text())
        for d in root.iterdir()
        if d.is_dir()
    }
    assert len(dirs) == 2
    (a_dir, a_fp), (b_dir, b_fp) = sorted(dirs.items(), key=lambda kv: "other" in kv[1].model)
    a_files, b_files = sorted(a_dir.rglob("*.kvc")), sorted(b_dir.rglob("*.kvc"))
    assert len(a_files) == len(b_files) == 2
    # Chunk order along the prompt is not visible in the names; any pairing is foreign KV.
    for a_file, b_file in zip(a_files, b_files, strict=True):
        a_key = bytes.fromhex(a_file.name[: -len(fmt.SUFFIX)])
        data = b_file.read_bytes()
        payload = memoryview(data[fmt.HEADER_BYTES :])
        a_file.unlink()
        fmt.write_chunk(a_file, b_fp.digest(), a_key, payload)
    shutil.rmtree(b_dir)
    run = run_engine(
        {"model": models["llama"], "settings": settings, "rounds": [[p], [p]]}, tmp_path / "c"
    )
    first, second = run["rounds"][0]["outputs"][0], run["rounds"][1]["outputs"][0]
    reference = ref["rounds"][0]["outputs"][0]
    assert first["cached"] == 0  # both forged files dropped when the index was rebuilt
    assert run["rounds"][0]["tiers"]["disk"]["errors"] >= 2
    assert first["tokens"] == reference["tokens"]
    assert (
        max(abs(x - y) for x, y in zip(first["logprobs"], reference["logprobs"], strict=True))
        <= 1e-3
    )
    assert second["cached"] == 512 and second["tokens"] == reference["tokens"]
    for f in a_dir.rglob("*.kvc"):  # what is there now is ours, re-stored and valid
        assert fmt.read_header(f, a_fp.digest(), bytes.fromhex(f.name[:-4])).payload_bytes > 0


@pytest.mark.vllm
def test_disk_full_while_serving(tiny_llama, tmp_path, tmpfs):
    """`kvpanel serve` with a disk tier on a 3 MiB tmpfs (11 chunks fit): once the filesystem
    is full the tier says so (note "full", healthy false) and every request still succeeds."""
    disk = tmpfs("3m")
    server = start(
        tiny_llama,
        tmp_path,
        "--cpu-cache-gb",
        "0.05",
        "--disk-path",
        str(disk),
        "--disk-cache-gb",
        "0.1",
    )
    try:
        url, token = server.url, server.token
        t0 = time.monotonic()
        outs = {}
        for i in range(12):  # 2 full chunks each: 24 chunks, far beyond 3 MiB
            outs[i] = tokens(url, tiny_llama, prompt(500 + i, 600))
        deadline = time.monotonic() + 30
        while True:
            d = tier_status(url, token)["tiers"]["disk"]
            if d["note"] == "full" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert d["note"] == "full" and d["healthy"] is False and d["errors"] >= 1, d
        assert shutil.disk_usage(disk).free < CHUNK + 64
        # Serving continues: repeats (CPU hits) and new prompts both answer, same tokens.
        for i in range(12):
            assert tokens(url, tiny_llama, prompt(500 + i, 600)) == outs[i]
        for i in range(4):
            tokens(url, tiny_llama, prompt(900 + i, 600))
        cpu = tier_status(url, token)["tiers"]["cpu"]
        assert cpu["hits"] >= 2
        print(f"\ndisk full after {time.monotonic() - t0:.1f}s: {d}")
    finally:
        assert server.stop() == 0
    valid, temps = validate_disk_dir(disk)
    assert valid >= 1 and temps == []


def _new_files(result: dict, root: Path) -> list[list[Path]]:
    """Per round, the chunk files that round added (a round here is one prompt)."""
    seen: set[str] = set()
    out = []
    for rnd in result["rounds"]:
        out.append([root / f for f in rnd["disk_files"] if f not in seen])
        seen.update(rnd["disk_files"])
    return out


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.vllm
def test_hostile_disk_dir_contents_in_real_vllm(models, tmp_path):
    """A FIFO, a chunk with a valid checksum over 16 bytes, a directory named like a chunk, one
    named like a temp file and a shard folder symlinked to elsewhere, planted into a real disk
    cache dir: the engine comes up on it, untouched chunks still hit, every greedy output equals
    recompute, and nothing behind the link is read, deleted or written."""
    prompts = [prompt(40 + i, 600) for i in range(4)]  # 2 full chunks each
    root = tmp_path / "disk"
    settings = {"cpu_bytes": 64 * MiB, "disk_path": str(root), "disk_bytes": 256 * MiB}
    ref = run_engine(
        {"model": models["llama"], "settings": settings, "rounds": [[p] for p in prompts]},
        tmp_path / "ref",
    )
    files = _new_files(ref, root)
    assert [len(f) for f in files] == [2, 2, 2, 2]
    (fp_dir,) = [d for d in root.iterdir() if d.is_dir()]
    fp = Fingerprint.from_json((fp_dir / "fingerprint.json").read_text())
    # Prompt 0: both chunks bad. A FIFO, and a valid header + checksum over a 16-byte payload.
    fifo, short = files[0]
    fifo.unlink()
    os.mkfifo(fifo)
    short_key = bytes.fromhex(short.name[: -len(fmt.SUFFIX)])
    short.unlink()
    fmt.write_chunk(short, fp.digest(), short_key, memoryview(bytes(range(16))))
    # Prompt 1: untouched, but its shard folder also holds a directory named like a temp file.
    tmp_dir = files[1][0].parent / "x.tmp.1"
    tmp_dir.mkdir()
    (tmp_dir / "inside").write_bytes(b"t")
    # Prompt 2: one chunk file replaced by a non-empty directory (unlink cannot remove it).
    as_dir = files[2][0]
    as_dir.unlink()
    as_dir.mkdir()
    (as_dir / "inside").write_bytes(b"d")
    # Prompt 3: one chunk's shard folder moved out and linked back, with a temp file and a
    # junk .kvc beside the (valid) chunk, which the old code deleted and indexed.
    all_files = [f for fs in files for f in fs]
    linked = next(f for f in files[3] if sum(g.parent == f.parent for g in all_files) == 1)
    elsewhere = tmp_path / "elsewhere"
    linked.parent.rename(elsewhere)
    (elsewhere / f"{linked.name}.tmp.99.abcd").write_bytes(b"partial")
    (elsewhere / "0123.kvc").write_bytes(b"junk")
    linked.parent.symlink_to(elsewhere, target_is_directory=True)
    before = _tree(elsewhere)

    run = run_engine(
        {"model": models["llama"], "settings": settings, "rounds": [prompts]},
        tmp_path / "run",
        timeout=400,
    )
    outs, refs = run["rounds"][0]["outputs"], [r["outputs"][0] for r in ref["rounds"]]
    for out, expected in zip(outs, refs, strict=True):
        assert out["tokens"] == expected["tokens"]
        pairs = zip(out["logprobs"], expected["logprobs"], strict=True)
        assert max(abs(x - y) for x, y in pairs) <= 1e-3
    assert [o["cached"] for o in outs][:2] == [0, 512]  # prompt 1's chunks still hit
    assert outs[2]["cached"] in (0, 256) and outs[3]["cached"] in (0, 256)
    disk = run["rounds"][0]["tiers"]["disk"]
    assert disk["errors"] >= 5 and disk["healthy"] and disk["note"] == "", disk
    assert _tree(elsewhere) == before
    assert linked.parent.is_dir() and not linked.parent.is_symlink()  # a real one, re-stored
    assert (tmp_dir / "inside").read_bytes() == b"t" and (as_dir / "inside").read_bytes() == b"d"
    for f in (fifo, short, linked):  # dropped, then re-stored whole, through real folders
        key = bytes.fromhex(f.name[: -len(fmt.SUFFIX)])
        assert fmt.read_header(f, fp.digest(), key).payload_bytes == fp.chunk_bytes
