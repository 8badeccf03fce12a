"""DMA backend: one descriptor per page, submitted as vLLM's ``swap_blocks_batch`` (one
``cuMemcpyBatchAsync`` driver call on CUDA 12.8+), so the copy engines move the bytes and no SM
is busy. It exists where vLLM's CUDA ops do (a GPU install of vLLM) and serves as the
comparison point for the Triton kernels in ``benchmarks/kernels_bench.py``.

Primitives: available(), descriptors(layers, block_ids, slots, to_slots), gather_chunks(...),
scatter_chunks(...) with the package's signature, vllm_triton_scatter_chunks(...) (vLLM's
Triton variant of the same call, which its worker uses for small CPU->GPU pages). The
descriptor table is built with numpy (no per-page Python loop).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import numpy as np
import torch

from kvpanel.kernels.layout import check_args


@functools.cache
def available() -> bool:
    try:
        from vllm import _custom_ops as ops  # noqa: F401

        return hasattr(torch.ops._C_cache_ops, "swap_blocks_batch")
    except Exception:  # no vLLM, or a CPU build without the op
        return False


def descriptors(
    layers: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    slots: Sequence[torch.Tensor],
    to_slots: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(src addresses, dst addresses, sizes): int64 CPU tensors, one entry per valid page."""
    layout = check_args(layers, block_ids, slots)
    ids = block_ids.numpy()
    chunk_idx, sub_idx = np.nonzero(ids >= 0)
    blocks = ids[chunk_idx, sub_idx].astype(np.int64)
    slot_base = np.array([s.data_ptr() for s in slots], dtype=np.int64)[chunk_idx]
    dev, host, size = [], [], []
    for layer, page, offset in zip(layers, layout.pages, layout.offsets, strict=True):
        row_bytes = layer.stride(0) * layer.element_size()
        dev.append(layer.data_ptr() + blocks * row_bytes)
        host.append(slot_base + offset + sub_idx.astype(np.int64) * page)
        size.append(np.full(blocks.shape, page, dtype=np.int64))
    d, h, n = (torch.from_numpy(np.concatenate(x)) for x in (dev, host, size))
    return (d, h, n) if to_slots else (h, d, n)


# Descriptor tables of copies that may still be running: the driver call can read them after
# it returns (vLLM's own worker keeps its pinned tables until the transfer's event completes).
# A first H200 run that let them be freed at once got a 64-chunk gather wrong.
_inflight: list[tuple[torch.cuda.Event, tuple[torch.Tensor, ...]]] = []


def _submit(
    src: torch.Tensor, dst: torch.Tensor, sizes: torch.Tensor, stream: torch.cuda.Stream | None
) -> None:
    from vllm import _custom_ops as ops

    if src.numel() == 0:
        return
    _inflight[:] = [(ev, bufs) for ev, bufs in _inflight if not ev.query()]
    pinned = tuple(t.pin_memory() for t in (src, dst, sizes))
    ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with ctx:
        ops.swap_blocks_batch(pinned[0], pinned[1], pinned[2])
        done = torch.cuda.Event()
        done.record()
    _inflight.append((done, pinned))


def gather_chunks(
    layers: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    slots: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
) -> None:
    _submit(*descriptors(layers, block_ids, slots, to_slots=True), stream)


def scatter_chunks(
    slots: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    layers: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
) -> None:
    _submit(*descriptors(layers, block_ids, slots, to_slots=False), stream)


def vllm_triton_scatter_chunks(
    slots: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    layers: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
) -> None:
    """Slots -> paged KV through vLLM's own Triton ``swap_blocks_batch`` (its CPU->GPU path
    for pages under 28 KiB; one descriptor per page, SMs read pinned host memory)."""
    from vllm.v1.kv_offload.cpu.swap_blocks_triton import swap_blocks_batch

    src, dst, sizes = descriptors(layers, block_ids, slots, to_slots=False)
    chunk = min(1 << (int(sizes.max()) - 1).bit_length(), 8192)
    ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
    with ctx:  # it uploads the tables itself (non_blocking from pageable memory: synchronous)
        swap_blocks_batch(src, dst, sizes, bytes_per_chunk=chunk)
