"""The vllm tier's capacity is the KV memory vLLM allocated, also for hybrid models.

gpt-oss-20b (24 layers: 12 sliding-window, 12 full attention; 8 KV heads of 64, bf16) under
vLLM's hybrid allocator: two KV groups of 12 layers whose blocks alias one allocation, so
``--kv-cache-memory-bytes 4294967296`` allocates 4 GiB, while layers x blocks x page counts
every byte twice (the 8.59 GB seen on the H200)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from kvpanel.serve.hub import StatusHub
from kvpanel.serve.server import engine_kv_bytes
from kvpanel.vllm_ext.worker import allocated_kv_bytes

LAYERS, KV_HEADS, HEAD, BLOCK, DTYPE_BYTES = 24, 8, 64, 16, 2
PAGE = 2 * BLOCK * KV_HEADS * HEAD * DTYPE_BYTES  # one layer's K and V for one block
GROUP_LAYERS = LAYERS // 2  # vLLM's bytes per block: the largest group's pages
KV_BYTES = 64 << 20  # stands in for --kv-cache-memory-bytes (4 GiB on the H200)
NUM_BLOCKS = KV_BYTES // (PAGE * GROUP_LAYERS)


def hybrid_kv_tensors() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One allocation; each group's 12 layers are views into it from byte 0 (vLLM 0.32)."""
    backing = torch.zeros(NUM_BLOCKS * PAGE * GROUP_LAYERS, dtype=torch.int8)
    per_layer = backing.view(GROUP_LAYERS, NUM_BLOCKS, PAGE)
    sliding = [per_layer[i] for i in range(GROUP_LAYERS)]
    full = [per_layer[i] for i in range(GROUP_LAYERS)]  # the same blocks, the other group
    return backing, sliding + full


def hybrid_vllm_config() -> Any:
    model = SimpleNamespace(
        get_num_layers=lambda _pc: LAYERS,
        get_num_kv_heads=lambda _pc: KV_HEADS,
        get_head_size=lambda: HEAD,
    )
    cache = SimpleNamespace(num_gpu_blocks=NUM_BLOCKS, block_size=BLOCK, cache_dtype="auto")
    return SimpleNamespace(model_config=model, cache_config=cache, parallel_config=None)


def test_hybrid_kv_counts_each_allocation_once() -> None:
    backing, layers = hybrid_kv_tensors()
    assert allocated_kv_bytes(layers) == backing.nbytes == NUM_BLOCKS * PAGE * GROUP_LAYERS
    assert abs(allocated_kv_bytes(layers) - KV_BYTES) < PAGE * GROUP_LAYERS
    # The geometry estimate (all layers x blocks x page) is what read 8.59 GB for 4 GiB:
    assert engine_kv_bytes(hybrid_vllm_config()) == 2 * backing.nbytes
    # vLLM 0.26's form: one tensor per layer slot, shared by a layer of each group.
    shared = [torch.zeros(NUM_BLOCKS, PAGE, dtype=torch.int8) for _ in range(GROUP_LAYERS)]
    assert allocated_kv_bytes(shared + shared) == GROUP_LAYERS * NUM_BLOCKS * PAGE


class ReportingControl:
    """The engine's control socket after the worker reported what vLLM allocated."""

    def __init__(self, kv_bytes: int) -> None:
        self.kv_bytes = kv_bytes

    def call(self, **request: Any) -> dict[str, Any]:
        return {"ok": True, "tiers": {}, "transfers": {}, "engine_kv_bytes": self.kv_bytes}


def test_status_capacity_is_the_allocated_bytes_not_the_estimate() -> None:
    backing, layers = hybrid_kv_tensors()
    hub = StatusHub(
        {"model": {"name": "gpt-oss-20b"}}, ReportingControl(allocated_kv_bytes(layers))
    )
    hub.engine_kv_bytes = engine_kv_bytes(hybrid_vllm_config())  # set at startup (estimate)
    snap = hub.refresh()
    assert snap["tiers"]["vllm"]["capacity_bytes"] == backing.nbytes
