"""Copy kernels between vLLM's paged KV cache and kvpanel's host chunk slots.

Primitives:
- ``gather_chunks(layers, block_ids, slots, *, stream=None)``: paged KV -> chunk slots.
- ``scatter_chunks(slots, block_ids, layers, *, stream=None)``: chunk slots -> paged KV.
- ``chunk_nbytes(layers, blocks_per_chunk)``: bytes one chunk slot needs.
- ``backend_for(layers)``: "triton" or "torch", the backend a call on ``layers`` uses.
- ``warm_up(layers, blocks_per_chunk, *, stream=None)``: compile the GPU kernels for this
  geometry now, on scratch buffers, so the first real transfer does not wait for Triton's JIT.

On CUDA the "triton" backend is the staged path (``staged_copy``: copy-engine memcpy per
chunk plus a Triton page shuffle) and falls back to the direct kernel (``triton_copy``: SMs
read/write pinned host pages) for calls the staged path cannot take.

``layers[l]`` is a ``(num_blocks, page_bytes_l)`` int8/uint8 view of one layer's KV;
``block_ids`` is an int64 ``(num_chunks, blocks_per_chunk)`` CPU tensor, -1 = skip that
sub-block; ``slots[c]`` is a 1-D uint8 tensor receiving chunk ``c`` (layout in
``kvpanel.kernels.layout``). CUDA calls are asynchronous: synchronise ``stream`` (or the
current stream) before reading slots or reusing them. ``KVPANEL_KERNEL_BACKEND=torch`` forces
the fallback, ``=direct`` the direct kernel. Triton is imported only when a CUDA call needs it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch

from kvpanel.kernels import torch_copy
from kvpanel.kernels.layout import chunk_nbytes, geometry

__all__ = ["backend_for", "chunk_nbytes", "gather_chunks", "scatter_chunks", "warm_up"]


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install must degrade to torch, not break the connector
        return False
    return True


def backend_for(layers: Sequence[torch.Tensor]) -> str:
    """ "triton" when ``layers`` are CUDA tensors and Triton imports, else "torch"."""
    if os.environ.get("KVPANEL_KERNEL_BACKEND", "") == "torch":
        return "torch"
    if len(layers) == 0 or layers[0].device.type != "cuda":
        return "torch"
    return "triton" if _triton_available() else "torch"


def _triton_module(layers: Sequence[torch.Tensor], slots: Sequence[torch.Tensor]):  # type: ignore[no-untyped-def]
    """(the Triton module that can run this call, the KV cache's geometry), or (None, None)
    for the torch fallback. The geometry goes on to the module: one key build per call."""
    if backend_for(layers) != "triton":
        return None, None
    from kvpanel.kernels import staged_copy, triton_copy

    geo = geometry(layers)
    forced_direct = os.environ.get("KVPANEL_KERNEL_BACKEND", "") == "direct"
    if not forced_direct and staged_copy.unsupported_reason(layers, slots, geo) is None:
        return staged_copy, geo
    if triton_copy.unsupported_reason(layers, slots, geo=geo):
        return None, None
    return triton_copy, geo


def gather_chunks(
    layers: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    slots: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
) -> None:
    """GPU paged KV -> host chunk slots; slots[c] receives chunk c, -1 entries are skipped."""
    mod, geo = _triton_module(layers, slots)
    if mod is not None:
        mod.gather_chunks(layers, block_ids, slots, stream=stream, geo=geo)
    else:
        torch_copy.gather_chunks(layers, block_ids, slots, stream=stream)


def scatter_chunks(
    slots: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    layers: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
) -> None:
    """Host chunk slots -> paged KV (inverse of gather_chunks); -1 entries are not written."""
    mod, geo = _triton_module(layers, slots)
    if mod is not None:
        mod.scatter_chunks(slots, block_ids, layers, stream=stream, geo=geo)
    else:
        torch_copy.scatter_chunks(slots, block_ids, layers, stream=stream)


def warm_up(
    layers: Sequence[torch.Tensor],
    blocks_per_chunk: int,
    *,
    stream: torch.cuda.Stream | None = None,
) -> None:
    """Run one whole and one partial chunk each way on scratch copies of ``layers``' geometry.

    Kernels specialise on page size, chunk size and alignment, which scratch buffers of the
    same shapes share; the real KV cache is never touched.
    """
    if backend_for(layers) != "triton" or not layers:
        return
    bpc = blocks_per_chunk
    scratch = [torch.zeros((bpc, int(t.shape[1])), dtype=t.dtype, device=t.device) for t in layers]
    slot = torch.zeros(chunk_nbytes(scratch, bpc), dtype=torch.uint8, pin_memory=True)
    whole = torch.arange(bpc, dtype=torch.int64).view(1, bpc)
    # Triton specialises integer arguments on divisibility by 16: partial chunks with one and
    # two missing blocks give the direct kernel job counts of both kinds.
    partials = [whole.clone() for _ in range(min(2, bpc - 1))]
    for missing, ids in enumerate(partials, start=1):
        ids[0, :missing] = -1
    for ids in (whole, *partials):
        gather_chunks(scratch, ids, [slot], stream=stream)
        scatter_chunks([slot], ids, scratch, stream=stream)
    torch.cuda.synchronize(layers[0].device)
