"""Staged backend: copy-engine PCIe transfers plus a Triton page shuffle on the GPU (CUDA only).

Primitives:
- ``unsupported_reason(layers, slots)``: why this backend cannot run a call (None if it can).
- ``gather_chunks(layers, block_ids, slots, stream=None, geo=None)``
- ``scatter_chunks(slots, block_ids, layers, stream=None, geo=None)``
  (``geo``: ``layout.geometry(layers)``, when the caller has it)

Why staged: the direct kernel (``triton_copy``) reads and writes pinned host memory from the
SMs, one 32 KiB page at a time; on the H200 it topped out at ~82 % of a pinned memcpy and it
needs SMs while the model runs. Here the PCIe leg of every chunk is ONE contiguous
``cudaMemcpyAsync`` between its host slot and a device staging buffer (the copy engine: no
SM, full link speed; chunks whose slots lie back to back share one, ``slot_runs``), and only
the shuffle between vLLM's scattered blocks and the staging buffer runs as a kernel, at
device-memory speed.

Double buffering: the staging buffer of a (device, stream) has two halves. A call of several
groups shuffles on a side stream of the same priority, so the shuffle of group k+1 runs while
the copy engine moves group k (one buffer made the copy engine idle during every shuffle:
89-90 % of memcpy at 64 chunks on the H200). Per half, one event marks its last use and the
next use waits for it, on whichever stream, so calls need no synchronisation. A one-group
call stays on the caller's stream (nothing to overlap, fewer host steps).

A gather of a chunk with -1 sub-blocks would copy stale staging bytes over the slot's
untouched pages, so such chunks use the direct kernel; a scatter copies the whole slot in and
the kernel skips -1 pages, so every chunk is staged.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kvpanel.kernels import triton_copy
from kvpanel.kernels.layout import KVGeometry, Layout, check_args, geometry, plan_groups
from kvpanel.kernels.slot_runs import copy_runs

# Both halves together (two streams per worker: 256 MiB of GPU memory beside vLLM's KV).
# Measured on the H200 (gpt-oss-20b chunks of 12 MiB, 64 per call): with halves of 5 chunks
# the copies ran at 93-97 % of memcpy, and at 92-93 % while another stream ran matmuls;
# halves of 2 chunks (64 MiB) gave 60-64 % next to the matmuls.
STAGING_BYTES = int(float(os.environ.get("KVPANEL_STAGING_MB", "128")) * 2**20)
# Programs per shuffle launch; default one per page. Next to a busy model, short programs
# land on whichever SMs free up first; a 132-program persistent grid waited on its slowest
# program (78 % of memcpy next to matmuls vs 92 % with one program per page, same halves).
PROGRAMS = int(os.environ.get("KVPANEL_STAGED_PROGRAMS", "0")) or 1 << 30
BLOCK_WORDS = 1024
NUM_WARPS = 4


@triton.jit
def _shuffle_kernel(
    stage_ptr,  # int64 words; staging chunk c, layer l, sub-block s at ((c*L + l)*BPC + s)*WORDS
    table_ptr,  # int64 (2, L): layer base - stage_ptr, row stride; both in UNIT-word units
    ids_ptr,  # int64 (num_chunks, BPC) GPU block ids, -1 = skip
    n_jobs,
    L,
    BPC: tl.constexpr,
    WORDS: tl.constexpr,
    UNIT: tl.constexpr,  # 2 when every layer address is 16-byte aligned, else 1
    TO_STAGE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    num_progs = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    job = pid
    while job < n_jobs:
        c = job // (L * BPC)
        rest = job % (L * BPC)
        layer = rest // BPC
        sub = rest % BPC
        bid = tl.load(ids_ptr + c * BPC + sub)
        if bid >= 0:
            # Offsets from stage_ptr times constexpr UNIT/WORDS let Triton prove 16-byte
            # alignment and emit 128-bit loads and stores.
            rel = tl.load(table_ptr + layer) + bid * tl.load(table_ptr + L + layer)
            kv = stage_ptr + rel * UNIT
            st = stage_ptr + ((c * L + layer) * BPC + sub).to(tl.int64) * WORDS
            for start in tl.static_range(0, WORDS, BLOCK):
                idx = start + offs
                if WORDS % BLOCK == 0:
                    if TO_STAGE:
                        tl.store(st + idx, tl.load(kv + idx))
                    else:
                        tl.store(kv + idx, tl.load(st + idx))
                else:
                    mask = idx < WORDS
                    if TO_STAGE:
                        tl.store(st + idx, tl.load(kv + idx, mask=mask), mask=mask)
                    else:
                        tl.store(kv + idx, tl.load(st + idx, mask=mask), mask=mask)
        job += num_progs


def unsupported_reason(
    layers: Sequence[torch.Tensor],
    slots: Sequence[torch.Tensor],
    geo: KVGeometry | None = None,
) -> str | None:
    """Why the staged path cannot run this call (the caller then uses the direct kernel)."""
    why = triton_copy.unsupported_reason(layers, slots, uniform=True, geo=geo)
    if why:
        return why
    if any(s.device.type == "cuda" for s in slots):
        return "slots live on the GPU (no PCIe leg to stage)"
    return None


@dataclass(slots=True)
class _Staging:
    """The staging halves of one (device, caller stream), the side stream that shuffles
    while the caller's stream copies, and per half the event of its last use."""

    halves: tuple[torch.Tensor, torch.Tensor]
    side: torch.cuda.Stream
    free: tuple[torch.cuda.Event, torch.cuda.Event]  # last use of halves[i] done
    handoff: tuple[torch.cuda.Event, torch.cuda.Event]  # shuffle <-> copy of halves[i]
    turn: int = 0  # the half the next group takes


_staging: dict[tuple[int, int], _Staging] = {}
# Host threads sharing a stream share its staging buffer: each call enqueues its groups whole.
_stage_locks: dict[tuple[int, int], threading.Lock] = defaultdict(threading.Lock)


def _stage_for(device: torch.device, stream: torch.cuda.Stream, nbytes: int) -> _Staging:
    """This stream's staging state, grown so that each half holds at least one chunk."""
    key = (device.index or 0, stream.cuda_stream)
    st = _staging.get(key)
    if st is not None and st.halves[0].numel() >= nbytes:
        return st
    if st is not None:  # the old halves may still be in use on either stream (rare: once)
        st.side.synchronize()
        stream.synchronize()
    half = -(-max(STAGING_BYTES // 2, nbytes) // 16) * 16  # whole int64 words, 16-byte rows
    buf = torch.empty(2 * half, dtype=torch.uint8, device=device)
    side = st.side if st else torch.cuda.Stream(device=device, priority=stream.priority)
    st = _Staging(
        (buf[:half], buf[half:]),
        side,
        (torch.cuda.Event(), torch.cuda.Event()),
        (torch.cuda.Event(), torch.cuda.Event()),
    )
    _staging[key] = st
    return st


def _table_for(
    layers: Sequence[torch.Tensor],
    stage: torch.Tensor,
    geo: KVGeometry,
    side: torch.cuda.Stream | None = None,
) -> tuple[torch.Tensor, int]:
    """Per-layer (base - stage, row stride) in unit words, built once per (KV cache,
    staging buffer) and kept in the KV cache's ``geo.memo``. Built on the current stream;
    ``side``: a second stream whose kernels read it too (the allocator then keeps its memory
    until both are done, should the memo ever drop it)."""
    key = ("staged_table", stage.data_ptr())
    hit: tuple[torch.Tensor, int] | None = geo.memo.get(key)
    if hit is not None:
        return hit
    anchor = stage.data_ptr()
    offsets = [t.data_ptr() - anchor for t in layers]
    strides = [t.stride(0) for t in layers]  # bytes: the views are int8
    unit = 16 if all(x % 16 == 0 for x in offsets + strides) else 8
    rel = [x // unit for x in offsets]
    rows = [x // unit for x in strides]
    # A blocking upload, once per (KV cache, half): only the first transfer waits for it.
    table = torch.tensor([rel, rows], dtype=torch.int64).to(stage.device)
    if side is not None:
        table.record_stream(side)
    geo.memo[key] = (table, unit // 8)
    return table, unit // 8


def _shuffle(
    layers: Sequence[torch.Tensor],
    ids: torch.Tensor,
    stage: torch.Tensor,
    lay: Layout,
    geo: KVGeometry,
    to_stage: bool,
) -> None:
    table, unit = _table_for(layers, stage, geo)
    # From pinned memory the id upload is a plain async copy; from pageable memory CUDA may
    # stage it through a driver buffer on the calling thread. The kernel reads row-major.
    ids_dev = ids.contiguous().pin_memory().to(stage.device, non_blocking=True)
    n_jobs = int(ids.shape[0]) * len(layers) * lay.blocks_per_chunk
    _shuffle_kernel[(min(n_jobs, PROGRAMS),)](
        stage.view(torch.int64),  # the kernel addresses int64 words
        table,
        ids_dev,
        n_jobs,
        len(layers),
        BPC=lay.blocks_per_chunk,
        WORDS=lay.pages[0] // 8,
        UNIT=unit,
        TO_STAGE=to_stage,
        BLOCK=BLOCK_WORDS,
        num_warps=NUM_WARPS,
    )


def _run(
    layers: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    slots: Sequence[torch.Tensor],
    stream: torch.cuda.Stream | None,
    to_slots: bool,
    geo: KVGeometry | None,
) -> None:
    geo = geo or geometry(layers)
    lay = check_args(layers, block_ids, slots, geo)
    if lay.num_chunks == 0:
        return
    device = layers[0].device
    with torch.cuda.device(device):
        stream = stream or torch.cuda.current_stream()
        lock = _stage_locks[(device.index or 0, stream.cuda_stream)]
        with torch.cuda.stream(stream), lock:
            st = _stage_for(device, stream, lay.nbytes)
            per_group = st.halves[0].numel() // lay.nbytes
            groups, direct = plan_groups(block_ids, per_group, to_slots, lay.holes)
            if direct:  # partial chunks of a gather (plan_groups stages every scatter chunk)
                picked = [slots[i] for i in direct]
                triton_copy.gather_chunks(layers, block_ids[direct], picked, stream=stream, geo=geo)
            for half in st.halves:  # built once; both streams' kernels read them
                _table_for(layers, half, geo, st.side)
            if len(groups) > 1:
                # The side stream must see what the caller ordered before this call (the
                # model's KV writes, the scheduler's block reuse).
                st.side.wait_stream(stream)
            try:
                _run_groups(layers, block_ids, slots, stream, to_slots, geo, lay, st, groups)
            finally:
                if len(groups) > 1 and not to_slots:
                    # The side stream ends with the last shuffle; callers sync on
                    # ``stream`` (also when a launch failed half-way).
                    stream.wait_stream(st.side)


def _run_groups(
    layers: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    slots: Sequence[torch.Tensor],
    stream: torch.cuda.Stream,
    to_slots: bool,
    geo: KVGeometry,
    lay: Layout,
    st: _Staging,
    groups: list[list[int]],
) -> None:
    """Enqueue every staged group, alternating halves (see the module docstring)."""
    for group in groups:
        first, last = group[0], group[-1]
        # Groups are runs of consecutive chunks unless partial ones went direct.
        contiguous = last - first + 1 == len(group)
        ids = block_ids[first : last + 1] if contiguous else block_ids[group]
        half, free, handoff = st.halves[st.turn], st.free[st.turn], st.handoff[st.turn]
        st.turn ^= 1
        if len(groups) == 1:  # nothing to overlap: all on the caller's stream
            stream.wait_event(free)
            if to_slots:
                _shuffle(layers, ids, half, lay, geo, to_stage=True)
            copy_runs(slots, group, half, lay.nbytes, to_slots)
            if not to_slots:
                _shuffle(layers, ids, half, lay, geo, to_stage=False)
            free.record(stream)
        elif to_slots:  # shuffle on the side, copy out on the caller's stream
            st.side.wait_event(free)
            with torch.cuda.stream(st.side):
                _shuffle(layers, ids, half, lay, geo, to_stage=True)
            handoff.record(st.side)
            stream.wait_event(handoff)
            copy_runs(slots, group, half, lay.nbytes, to_slots)
            free.record(stream)
        else:  # copy in on the caller's stream, shuffle on the side
            stream.wait_event(free)
            copy_runs(slots, group, half, lay.nbytes, to_slots)
            handoff.record(stream)
            st.side.wait_event(handoff)
            with torch.cuda.stream(st.side):
                _shuffle(layers, ids, half, lay, geo, to_stage=False)
            free.record(st.side)


def gather_chunks(
    layers: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    slots: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
    geo: KVGeometry | None = None,
) -> None:
    """Paged KV -> chunk slots; the caller checks ``unsupported_reason`` first."""
    _run(layers, block_ids, slots, stream, True, geo)


def scatter_chunks(
    slots: Sequence[torch.Tensor],
    block_ids: torch.Tensor,
    layers: Sequence[torch.Tensor],
    *,
    stream: torch.cuda.Stream | None = None,
    geo: KVGeometry | None = None,
) -> None:
    """Chunk slots -> paged KV; the caller checks ``unsupported_reason`` first."""
    _run(layers, block_ids, slots, stream, False, geo)
