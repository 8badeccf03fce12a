"""Portable PyTorch backend for the chunk copies (CPU and CUDA).

Primitives:
- ``gather_chunks(layers, block_ids, slots, stream=None)``: paged KV -> chunk slots.
- ``scatter_chunks(slots, block_ids, layers, stream=None)``: chunk slots -> paged KV.

Both go through a staging buffer of whole chunks on the layers' device: per layer one
vectorised ``index_select`` / ``index_copy_`` over the valid (non -1) entries, and per
chunk one bulk copy between staging and slot, so a CUDA cache with pinned host slots
costs one PCIe transfer per chunk instead of one per page. Copies into pinned slots are
``non_blocking``: the caller synchronises the stream before reading the slots.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from kvpanel.kernels.layout import Layout, check_args

# Staging is bounded so a 64-chunk batch of a large model does not take GBs of GPU memory.
STAGING_MAX_BYTES = 256 << 20


@contextlib.contextmanager
def _on_stream(device: torch.device, stream: torch.cuda.Stream | None) -> Iterator[None]:
    if stream is None or device.type != "cuda":
        yield
        return
    with torch.cuda.device(device), torch.cuda.stream(stream):
        yield


def _groups(lay: Layout) -> Iterator[range]:
    """Consecutive chunk ranges whose staging fits in STAGING_MAX_BYTES (at least one chunk)."""
    per = max(1, STAGING_MAX_BYTES // max(1, lay.nbytes))
    for start in range(0, lay.num_chunks, per):
        yield range(start, min(start + per, lay.num_chunks))


def _valid_runs(row: list[int]) -> list[tuple[int, int]]:
    """Half-open [b0, b1) runs of sub-blocks whose id is not -1."""
    runs: list[tuple[int, int]] = []
    start = None
    for b, block in enumerate(row + [-1]):
        if block >= 0 and start is None:
            start = b
        elif block < 0 and start is not None:
            runs.append((start, b))
            start = None
    return runs


def _valid_index(block_ids: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(chunk index, sub-block index, block id) of every valid entry, on ``device``.

    Built on the host so that no boolean-mask indexing (which syncs) runs on the GPU.
    """
    chunk_i, sub_i = (block_ids >= 0).nonzero(as_tuple=True)
    ids = block_ids[chunk_i, sub_i]
    return tuple(t.to(device, non_blocking=True) for t in (chunk_i, sub_i, ids))


def _layer_view(staging: torch.Tensor, lay: Layout, li: int) -> torch.Tensor:
    """(chunks, blocks_per_chunk, page) view of layer ``li`` inside the staging rows."""
    page = lay.pages[li]
    start = lay.offsets[li]
    region = staging[:, start : start + lay.blocks_per_chunk * page]
    return region.view(staging.shape[0], lay.blocks_per_chunk, page)


def gather_chunks(
    layers: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    slots: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
) -> None:
    """Copy block ``block_ids[c, b]`` of every layer into ``slots[c]``; -1 entries are skipped."""
    lay = check_args(layers, block_ids, slots)
    device = layers[0].device
    with _on_stream(device, stream):
        for group in _groups(lay):
            ids = block_ids[group.start : group.stop]
            if not bool((ids >= 0).any()):
                continue
            chunk_i, sub_i, valid_ids = _valid_index(ids, device)
            staging = torch.empty((len(group), lay.nbytes), dtype=torch.uint8, device=device)
            for li, layer in enumerate(layers):
                pages = layer.view(torch.uint8).index_select(0, valid_ids)
                _layer_view(staging, lay, li).index_put_((chunk_i, sub_i), pages)
            rows = ids.tolist()
            for i, c in enumerate(group):
                dst = slots[c]
                if min(rows[i]) >= 0:
                    dst[: lay.nbytes].copy_(staging[i], non_blocking=True)
                    continue
                # Partial chunk: only the valid runs may be written, the rest of the slot
                # may hold bytes of another request.
                for b0, b1 in _valid_runs(rows[i]):
                    for li, page in enumerate(lay.pages):
                        lo = lay.offsets[li] + b0 * page
                        hi = lay.offsets[li] + b1 * page
                        dst[lo:hi].copy_(staging[i, lo:hi], non_blocking=True)


def scatter_chunks(
    slots: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    layers: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
) -> None:
    """Inverse of ``gather_chunks``: write slot bytes back into the paged blocks."""
    lay = check_args(layers, block_ids, slots)
    device = layers[0].device
    with _on_stream(device, stream):
        for group in _groups(lay):
            ids = block_ids[group.start : group.stop]
            if not bool((ids >= 0).any()):
                continue
            chunk_i, sub_i, valid_ids = _valid_index(ids, device)
            staging = torch.empty((len(group), lay.nbytes), dtype=torch.uint8, device=device)
            for i, c in enumerate(group):
                # Reading the bytes of -1 entries is harmless: they are never written out.
                staging[i].copy_(slots[c][: lay.nbytes], non_blocking=True)
            for li, layer in enumerate(layers):
                pages = _layer_view(staging, lay, li)[chunk_i, sub_i]
                layer.view(torch.uint8).index_copy_(0, valid_ids, pages)
