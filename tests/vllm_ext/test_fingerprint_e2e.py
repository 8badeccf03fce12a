"""Inside real vLLM: KV computed by another model, or the same weights under other settings, is
never served from a shared disk directory.

Engine A (the tiny llama) fills a disk directory. Engines B (a copy of the same directory name in
another folder, with a rank-8 change merged into layer 0's q_proj/k_proj: same file size, same
tensor order) and C (the same model directory with ``hf_overrides`` changing rope_theta) open a
copy of it. Each runs the prompt plain (a hit would come from A's chunks) and salted (vLLM salts
its block hashes, so that run is a recompute in the same engine): 0 kvpanel hits, and the plain
output equals the recompute.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from .conftest import prompt, run_engine

pytestmark = pytest.mark.vllm

MiB = 1 << 20
P = prompt(7, 600)  # two full 256-token chunks + a tail


def merge_rank8_delta(src: Path, dst: Path, layer: int = 0) -> Path:
    """Copy ``src`` to ``dst`` with W += A @ B (rank 8) merged into one layer's q_proj and k_proj.

    Shapes and names are unchanged, so the safetensors header and the file size are too; the
    changed tensors sit in the middle of the file.
    """
    shutil.copytree(src, dst)
    (weights,) = sorted(dst.glob("*.safetensors"))
    tensors = load_file(str(weights))
    gen = torch.Generator().manual_seed(8)
    for proj in ("q_proj", "k_proj"):
        name = f"model.layers.{layer}.self_attn.{proj}.weight"
        w = tensors[name]
        a = torch.randn(w.shape[0], 8, generator=gen) * 0.05
        b = torch.randn(8, w.shape[1], generator=gen) * 0.05
        tensors[name] = (w.float() + a @ b).to(w.dtype).contiguous()
    size = weights.stat().st_size
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == size
    return dst


@pytest.fixture(scope="module")
def filled_disk(models, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("fp-fill")
    spec = {
        "model": models["llama"],
        "settings": {
            "cpu_bytes": 64 * MiB,
            "disk_path": str(work / "disk"),
            "disk_bytes": 256 * MiB,
        },
        "rounds": [[P]],
    }
    result = run_engine(spec, work / "run")
    assert result["rounds"][0]["tiers"]["disk"]["chunks"] == 2
    return work / "disk"


def run_on_copy(model: str, disk: Path, work: Path, engine_kwargs: dict | None = None) -> dict:
    shutil.copytree(disk, work / "disk")
    spec = {
        "model": model,
        "settings": {
            "cpu_bytes": 64 * MiB,
            "disk_path": str(work / "disk"),
            "disk_bytes": 256 * MiB,
        },
        "rounds": [[P, {"ids": P, "cache_salt": "recompute"}]],
        "engine_kwargs": engine_kwargs or {},
    }
    return run_engine(spec, work / "run")


def assert_no_hits_and_recompute(result: dict) -> None:
    plain, recompute = result["rounds"][0]["outputs"]
    assert plain["cached"] == 0, "another model's KV was served"
    assert recompute["cached"] == 0
    assert result["rounds"][0]["tiers"]["disk"]["hits"] == 0
    assert plain["tokens"] == recompute["tokens"]
    assert (
        max(abs(x - y) for x, y in zip(plain["logprobs"], recompute["logprobs"], strict=True))
        < 1e-3
    )


def test_weights_changed_mid_file_get_no_hits(filled_disk, models, tmp_path):
    llama = Path(models["llama"])
    model_b = merge_rank8_delta(llama, tmp_path / "other-parent" / llama.name)
    assert_no_hits_and_recompute(run_on_copy(str(model_b), filled_disk, tmp_path))


def test_rope_theta_override_gets_no_hits(filled_disk, models, tmp_path):
    overrides = {"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}
    result = run_on_copy(models["llama"], filled_disk, tmp_path, {"hf_overrides": overrides})
    assert_no_hits_and_recompute(result)
