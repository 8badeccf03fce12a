"""Triton backend: every page of a gather/scatter call in ONE kernel launch (CUDA only).

Primitives:
- ``unsupported_reason(layers, slots)``: why this backend cannot run a call (None if it can).
- ``gather_chunks(layers, block_ids, slots, stream=None, num_programs=None, geo=None)``
- ``scatter_chunks(slots, block_ids, layers, stream=None, num_programs=None, geo=None)``
  (``geo``: ``layout.geometry(layers)``, when the caller has it: saves rebuilding its key)

The host builds a descriptor table of (src, dst[, words]) per valid (chunk, layer,
sub-block) page and uploads it from pinned memory; a persistent grid of programs loops
over the pages with wide vector loads/stores. Host slots must be pinned: the kernel
dereferences their device-visible (UVA) addresses directly, as vLLM's
``swap_blocks_triton`` does, so no copy engine and no per-page memcpy call is involved.

Importing this module imports Triton; ``kvpanel.kernels`` only does so lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from kvpanel.kernels.layout import KVGeometry, Layout, check_args, geometry

# Programs per launch. A PCIe copy saturates the link with a fraction of the SMs, and
# the copies overlap model compute, so do not take the whole GPU by default.
DEFAULT_PROGRAMS = int(os.environ.get("KVPANEL_TRITON_PROGRAMS", "64"))
# int64 words one program moves per loop step (8 KiB in flight per program).
BLOCK_WORDS = 1024
NUM_WARPS = 4


@triton.jit
def _copy_pages_kernel(
    desc_ptr,  # int64 (3, n_jobs): src offset, dst offset (UNIT-word units from desc_ptr), words
    n_jobs,
    WORDS: tl.constexpr,  # page words when every page has the same size, else 0
    UNIT: tl.constexpr,  # 2 when every address is 16-byte aligned, else 1
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    num_progs = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    job = pid
    while job < n_jobs:
        # Addresses are stored as offsets from desc_ptr (16-byte aligned, specialised by
        # Triton) in UNIT-word units: multiplying by the constexpr UNIT lets the compiler
        # prove 16-byte alignment and emit 128-bit loads/stores.
        src = desc_ptr + tl.load(desc_ptr + job) * UNIT
        dst = desc_ptr + tl.load(desc_ptr + n_jobs + job) * UNIT
        if WORDS > 0:
            for start in tl.static_range(0, WORDS, BLOCK):
                idx = start + offs
                if WORDS % BLOCK == 0:
                    tl.store(dst + idx, tl.load(src + idx))
                else:
                    mask = idx < WORDS
                    tl.store(dst + idx, tl.load(src + idx, mask=mask), mask=mask)
        else:
            words = tl.load(desc_ptr + 2 * n_jobs + job)
            for start in range(0, words, BLOCK):
                idx = start + offs
                mask = idx < words
                tl.store(dst + idx, tl.load(src + idx, mask=mask), mask=mask)
        job += num_progs


def unsupported_reason(
    layers: Sequence[torch.Tensor],
    slots: Sequence[torch.Tensor],
    *,
    uniform: bool = False,
    geo: KVGeometry | None = None,
) -> str | None:
    """Why the kernel cannot run this call (the caller then uses the torch backend).

    ``uniform``: the caller (the staged path) also needs one page size for every layer; the
    direct kernel itself handles mixed sizes. ``geo``: ``geometry(layers)``, if at hand."""
    device = layers[0].device
    if device.type != "cuda":
        return "layers are not CUDA tensors"
    why = _layers_reason(layers, geo or geometry(layers))
    if why and (uniform or why != _MIXED_PAGES):
        return why
    for slot in slots:
        if slot.device.type == "cuda":
            if slot.device != device:
                return "a slot lives on another GPU"
        elif not slot.is_pinned():
            # Pageable memory has no device-visible address: the kernel would fault.
            return "a host slot is not pinned"
        if slot.data_ptr() % 8:
            return "a slot is not 8-byte aligned"
    return None


_MIXED_PAGES = "layers have different page sizes"


def _layers_reason(layers: Sequence[torch.Tensor], geo: KVGeometry) -> str | None:
    """The per-layer part of ``unsupported_reason``, once per KV cache (in ``geo.memo``)."""
    if "direct_reason" not in geo.memo:
        why = None
        for layer in layers:
            if layer.shape[1] % 8 or layer.data_ptr() % 8 or layer.stride(0) % 8:
                why = "a page is not 8-byte aligned"
        if len(set(geo.pages)) != 1:
            why = why or _MIXED_PAGES
        geo.memo["direct_reason"] = why
    reason: str | None = geo.memo["direct_reason"]
    return reason


def _descriptors(
    layers: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    slots: Sequence[torch.Tensor],
    lay: Layout,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Absolute (layer address, slot address, page bytes) of every valid page, chunk-major."""
    bpc = lay.blocks_per_chunk
    base = torch.tensor([t.data_ptr() for t in layers], dtype=torch.int64)
    row = torch.tensor([t.stride(0) for t in layers], dtype=torch.int64)  # bytes (1-byte dtype)
    page = torch.tensor(lay.pages, dtype=torch.int64)
    offset = torch.tensor(lay.offsets, dtype=torch.int64)
    slot_base = torch.tensor([s.data_ptr() for s in slots], dtype=torch.int64)
    sub = torch.arange(bpc, dtype=torch.int64)
    # (chunk, layer, sub-block) grids; the -1 entries are masked out below.
    layer_addr = base[None, :, None] + block_ids[:, None, :] * row[None, :, None]
    slot_addr = slot_base[:, None, None] + offset[None, :, None] + sub * page[:, None]
    sizes = page[None, :, None].expand_as(layer_addr)
    valid = (block_ids >= 0)[:, None, :].expand_as(layer_addr)
    return layer_addr[valid], slot_addr[valid], sizes[valid]


def _launch(
    src: torch.Tensor,
    dst: torch.Tensor,
    sizes: torch.Tensor,
    lay: Layout,
    device: torch.device,
    stream: torch.cuda.Stream | None,
    num_programs: int | None,
) -> None:
    n = int(src.numel())
    if n == 0:
        return
    aligned16 = bool(((src | dst | sizes) % 16 == 0).all())
    unit_bytes = 16 if aligned16 else 8
    uniform = lay.uniform_page
    with torch.cuda.device(device), torch.cuda.stream(stream or torch.cuda.current_stream()):
        # Allocate first: addresses are encoded relative to this buffer's own address.
        desc_dev = torch.empty((3, n), dtype=torch.int64, device=device)
        anchor = desc_dev.data_ptr()
        host = torch.empty((3, n), dtype=torch.int64, pin_memory=True)
        # Exact: both the anchor (allocator alignment) and every address are unit-aligned.
        torch.floor_divide(src - anchor, unit_bytes, out=host[0])
        torch.floor_divide(dst - anchor, unit_bytes, out=host[1])
        torch.floor_divide(sizes, 8, out=host[2])
        # The caching host allocator keeps `host` alive until this copy has run.
        desc_dev.copy_(host, non_blocking=True)
        programs = min(n, num_programs or DEFAULT_PROGRAMS)
        _copy_pages_kernel[(programs,)](
            desc_dev,
            n,
            WORDS=(uniform // 8) if uniform is not None else 0,
            UNIT=unit_bytes // 8,
            BLOCK=BLOCK_WORDS,
            num_warps=NUM_WARPS,
        )


def gather_chunks(
    layers: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    slots: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
    num_programs: int | None = None,
    geo: KVGeometry | None = None,
) -> None:
    """Paged KV -> chunk slots in one launch; the caller checks ``unsupported_reason`` first."""
    lay = check_args(layers, block_ids, slots, geo)
    layer_addr, slot_addr, sizes = _descriptors(layers, block_ids, slots, lay)
    _launch(layer_addr, slot_addr, sizes, lay, layers[0].device, stream, num_programs)


def scatter_chunks(
    slots: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    layers: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
    num_programs: int | None = None,
    geo: KVGeometry | None = None,
) -> None:
    """Chunk slots -> paged KV in one launch; the caller checks ``unsupported_reason`` first."""
    lay = check_args(layers, block_ids, slots, geo)
    layer_addr, slot_addr, sizes = _descriptors(layers, block_ids, slots, lay)
    _launch(slot_addr, layer_addr, sizes, lay, layers[0].device, stream, num_programs)
