"""Chunk-slot layout and argument checks shared by every copy backend.

Primitives:
- ``page_sizes(layers)``: bytes of one paged block per layer.
- ``chunk_nbytes(layers, blocks_per_chunk)``: bytes of one host chunk slot.
- ``geometry(layers)``: a KV cache's validated per-layer facts (``KVGeometry``), cached.
- ``Layout`` / ``check_args(layers, block_ids, slots, geo=None)``: validated geometry of one call.
- ``plan_groups(block_ids, chunks_per_group, whole_only)``: which chunks of a call the staged
  backend moves through its staging buffer (in groups) and which take the direct kernel.

A slot holds ``blocks_per_chunk`` consecutive blocks of every layer, layer-major::

    offset(l, b) = blocks_per_chunk * sum(page_bytes[:l]) + b * page_bytes[l]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

_BYTE_DTYPES = (torch.int8, torch.uint8)


def page_sizes(layers: Sequence[torch.Tensor]) -> list[int]:
    """Bytes per paged block of each layer (``layers[l]`` is ``(num_blocks, page_bytes)``)."""
    sizes = []
    for i, layer in enumerate(layers):
        if layer.dim() != 2 or layer.dtype not in _BYTE_DTYPES:
            raise ValueError(
                f"layers[{i}] must be a 2-D int8/uint8 tensor, "
                f"got {layer.dtype} {tuple(layer.shape)}"
            )
        # Rows may be strided (views into a shared K/V tensor), but bytes inside a row
        # must be contiguous or a page is not one memory range.
        if layer.shape[1] > 1 and layer.stride(1) != 1:
            raise ValueError(f"layers[{i}] rows must be contiguous (stride(1) == 1)")
        sizes.append(int(layer.shape[1]))
    return sizes


def chunk_nbytes(layers: Sequence[torch.Tensor], blocks_per_chunk: int) -> int:
    """Bytes one chunk slot needs: ``blocks_per_chunk`` blocks of every layer."""
    return blocks_per_chunk * sum(page_sizes(layers))


@dataclass(frozen=True)
class Layout:
    """Geometry of one gather/scatter call, after validation."""

    pages: list[int]  # page bytes per layer
    offsets: list[int]  # byte offset of each layer's first sub-block inside a slot
    num_chunks: int
    blocks_per_chunk: int
    nbytes: int  # bytes of a chunk inside a slot
    holes: bool = True  # some block id is -1 (False: every chunk is whole)

    @property
    def uniform_page(self) -> int | None:
        """The shared page size when every layer has the same one, else None."""
        return self.pages[0] if len(set(self.pages)) == 1 else None


def layers_key(layers: Sequence[torch.Tensor]) -> tuple:
    """Exact identity of a layers list's memory (address, shape, strides, dtype per
    layer), the key of per-KV-cache caches (checks, address tables): ~20 us to build, a
    fifth of re-validating every layer."""
    return tuple((t.data_ptr(), t.shape, t.stride(), t.dtype) for t in layers)


@dataclass(slots=True)
class KVGeometry:
    """One KV cache's validated per-layer facts, built once per layers list (``geometry``).

    Backends keep their own per-KV-cache derivations (checks, address tables) in ``memo``,
    so one call builds the ~20 us ``layers_key`` once, not once per cache it consults."""

    pages: list[int]  # page bytes per layer
    limit: int  # usable block count (the smallest layer's)
    memo: dict = field(default_factory=dict)


_geometry: dict[tuple, KVGeometry] = {}


def geometry(layers: Sequence[torch.Tensor]) -> KVGeometry:
    """The layers list's ``KVGeometry``, validated on first sight: per-layer Python checks
    cost ~100 us a call, more than a one-chunk copy's launch."""
    if len(layers) == 0:
        raise ValueError("need at least one layer")
    key = layers_key(layers)
    hit = _geometry.get(key)
    if hit is not None:
        return hit
    pages = page_sizes(layers)
    device = layers[0].device
    if any(layer.device != device for layer in layers):
        raise ValueError("all layers must live on one device")
    if len(_geometry) > 64:  # only tests and benchmarks churn through layer lists
        _geometry.clear()
    geo = KVGeometry(pages, min(int(layer.shape[0]) for layer in layers))
    _geometry[key] = geo
    return geo


def check_args(
    layers: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    slots: Sequence[torch.Tensor],
    geo: KVGeometry | None = None,
) -> Layout:
    """Validate one call's arguments and return its layout; raise ValueError on misuse.

    ``geo``: ``geometry(layers)`` when the caller already has it."""
    geo = geo or geometry(layers)
    if block_ids.dim() != 2 or block_ids.dtype != torch.int64:
        raise ValueError(
            f"block_ids must be int64 (num_chunks, blocks_per_chunk), got "
            f"{block_ids.dtype} {tuple(block_ids.shape)}"
        )
    if block_ids.device.type != "cpu":
        raise ValueError("block_ids must be a CPU tensor (descriptors are built on the host)")
    num_chunks, bpc = (int(s) for s in block_ids.shape)
    if len(slots) != num_chunks:
        raise ValueError(f"got {len(slots)} slots for {num_chunks} chunks")
    offsets = []
    total = 0
    for page in geo.pages:
        offsets.append(total)
        total += bpc * page
    for c, slot in enumerate(slots):
        if slot.dim() != 1 or slot.dtype != torch.uint8 or not slot.is_contiguous():
            raise ValueError(f"slots[{c}] must be a contiguous 1-D uint8 tensor")
        if slot.numel() < total:
            raise ValueError(f"slots[{c}] holds {slot.numel()} bytes, chunk needs {total}")
    holes = False
    if block_ids.numel() > 0:
        lo_t, hi_t = torch.aminmax(block_ids)
        lo, hi = int(lo_t), int(hi_t)
        # An out-of-range id would be a silent wild write on the Triton path.
        if lo < -1 or hi >= geo.limit:
            raise ValueError(f"block ids must lie in [-1, {geo.limit}), got [{lo}, {hi}]")
        holes = lo < 0
    return Layout(geo.pages, offsets, num_chunks, bpc, total, holes)


def plan_groups(
    block_ids: torch.Tensor, chunks_per_group: int, whole_only: bool, holes: bool = True
) -> tuple[list[list[int]], list[int]]:
    """(staged groups of chunk indices, chunks for the direct kernel).

    ``whole_only`` (gathers): a chunk with any -1 sub-block goes direct. ``holes=False``
    (``Layout.holes``: no -1 anywhere) skips looking.
    """
    n = int(block_ids.shape[0])
    look = whole_only and holes
    whole = (block_ids >= 0).all(dim=1).tolist() if look else [True] * n
    staged = [i for i, ok in enumerate(whole) if ok]
    direct = [i for i, ok in enumerate(whole) if not ok]
    size = max(1, chunks_per_group)
    return [staged[i : i + size] for i in range(0, len(staged), size)], direct
