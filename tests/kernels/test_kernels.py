"""Torch backend vs the Python-loop reference, round trips, dispatch and the Triton path."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import (
    POISON,
    assert_matches_reference,
    make_block_ids,
    make_layers,
    poisoned_slots,
    random_bytes,
)

from kvpanel import kernels
from kvpanel.kernels import reference, torch_copy
from kvpanel.kernels.layout import chunk_nbytes

NUM_BLOCKS = 64
PAGES = {"equal": [64, 64, 64], "mixed": [32, 96, 8, 64]}
# (num_chunks, blocks_per_chunk, -1 entries at the head of chunk 0, at the tail of the last)
SHAPES = [(1, 1, 0, 0), (3, 2, 1, 1), (8, 2, 0, 1), (1, 16, 3, 5), (3, 16, 7, 9), (8, 1, 0, 0)]


def expected_slot_mask(ids: torch.Tensor, pages: list[int], nbytes: int, size: int) -> list:
    """Per chunk, a bool mask of the slot bytes a gather must write."""
    bpc = ids.shape[1]
    masks = []
    for c in range(ids.shape[0]):
        m = torch.zeros(size, dtype=torch.bool)
        off = 0
        for page in pages:
            for b in range(bpc):
                if ids[c, b] >= 0:
                    m[off + b * page : off + (b + 1) * page] = True
            off += bpc * page
        assert off == nbytes
        masks.append(m)
    return masks


@pytest.mark.parametrize("pages", PAGES.values(), ids=PAGES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_gather_matches_reference(pages: list[int], shape: tuple) -> None:
    num_chunks, bpc, head, tail = shape
    gen = torch.Generator().manual_seed(hash((tuple(pages), shape)) % 2**31)
    layers = make_layers(pages, NUM_BLOCKS, gen)
    ids = make_block_ids(num_chunks, bpc, NUM_BLOCKS, gen, head, tail)
    nbytes = chunk_nbytes(layers, bpc)
    before = [t.clone() for t in layers]

    ref = poisoned_slots(num_chunks, nbytes)
    reference.gather_chunks(layers, ids, ref)
    got = poisoned_slots(num_chunks, nbytes)
    torch_copy.gather_chunks(layers, ids, got)

    masks = expected_slot_mask(ids, pages, nbytes, ref[0].numel())
    for c in range(num_chunks):
        assert torch.equal(got[c], ref[c]), f"chunk {c} differs from reference"
        # Every byte that must be written was written (poison would survive otherwise; the
        # random source can hold 0xA5 too, so compare against the source, not the poison).
        written = masks[c]
        assert bool((got[c][~written] == POISON).all()), "a -1 entry or tail byte was written"
        assert int(written.sum()) == nbytes - (ids[c] < 0).sum().item() * sum(pages)
    for a, b in zip(before, layers, strict=True):
        assert torch.equal(a, b), "gather modified the cache"


def test_gather_writes_every_byte_against_source() -> None:
    """Byte-level check against the cache itself, independent of the reference."""
    gen = torch.Generator().manual_seed(7)
    pages = PAGES["mixed"]
    layers = make_layers(pages, NUM_BLOCKS, gen)
    ids = make_block_ids(3, 4, NUM_BLOCKS, gen, head=1, tail=2)
    slots = poisoned_slots(3, chunk_nbytes(layers, 4))
    torch_copy.gather_chunks(layers, ids, slots)
    for c in range(3):
        off = 0
        for layer, page in zip(layers, pages, strict=True):
            for b in range(4):
                got = slots[c][off + b * page : off + (b + 1) * page]
                if ids[c, b] >= 0:
                    assert torch.equal(got, layer[int(ids[c, b])].view(torch.uint8))
                else:
                    assert bool((got == POISON).all())
            off += 4 * page


@pytest.mark.parametrize("pages", PAGES.values(), ids=PAGES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_scatter_matches_reference(pages: list[int], shape: tuple) -> None:
    num_chunks, bpc, head, tail = shape
    gen = torch.Generator().manual_seed(hash((shape, tuple(pages))) % 2**31)
    nbytes = chunk_nbytes(make_layers(pages, 1, gen), bpc)
    ids = make_block_ids(num_chunks, bpc, NUM_BLOCKS, gen, head, tail)
    slots = [random_bytes((nbytes + 16,), gen) for _ in range(num_chunks)]
    slots_before = [s.clone() for s in slots]
    # Poisoned caches: random too, so an untouched block is distinguishable from a copy.
    ref = make_layers(pages, NUM_BLOCKS, gen)
    got = [t.clone() for t in ref]
    untouched = [t.clone() for t in ref]

    reference.scatter_chunks(slots, ids, ref)
    torch_copy.scatter_chunks(slots, ids, got)

    written = set(ids[ids >= 0].tolist())
    for li, (r, g, u) in enumerate(zip(ref, got, untouched, strict=True)):
        assert torch.equal(g, r), f"layer {li} differs from reference"
        for blk in range(NUM_BLOCKS):
            if blk not in written:
                assert torch.equal(g[blk], u[blk]), f"layer {li} block {blk} was modified"
    for a, b in zip(slots_before, slots, strict=True):
        assert torch.equal(a, b), "scatter modified a slot"


def test_round_trip_into_fresh_cache() -> None:
    gen = torch.Generator().manual_seed(3)
    pages = PAGES["mixed"]
    src = make_layers(pages, NUM_BLOCKS, gen)
    ids = make_block_ids(3, 16, NUM_BLOCKS, gen, head=2, tail=3)
    slots = poisoned_slots(3, chunk_nbytes(src, 16))
    kernels.gather_chunks(src, ids, slots)
    dst = make_layers(pages, NUM_BLOCKS, gen)
    kernels.scatter_chunks(slots, ids, dst)
    for s, d in zip(src, dst, strict=True):
        for blk in ids[ids >= 0].tolist():
            assert torch.equal(s[blk], d[blk])


def test_dispatch_matches_reference_on_cpu() -> None:
    """The CUDA tests' round-trip check, through the dispatcher's torch backend on CPU."""
    gen = torch.Generator().manual_seed(37)
    layers = make_layers(PAGES["mixed"], NUM_BLOCKS, gen)
    ids = make_block_ids(3, 4, NUM_BLOCKS, gen, head=1, tail=2)
    got = poisoned_slots(3, chunk_nbytes(layers, 4))
    assert_matches_reference(kernels.gather_chunks, kernels.scatter_chunks, layers, ids, got, gen)


def test_strided_layer_views() -> None:
    """Layers that are K/V halves of one shared tensor (row stride > page bytes)."""
    gen = torch.Generator().manual_seed(5)
    shared = random_bytes((NUM_BLOCKS, 2 * 48), gen).view(torch.int8)
    layers = [shared[:, :48], shared[:, 48:]]
    ids = make_block_ids(2, 4, NUM_BLOCKS, gen, head=1, tail=1)
    nbytes = chunk_nbytes(layers, 4)
    ref, got = poisoned_slots(2, nbytes), poisoned_slots(2, nbytes)
    reference.gather_chunks(layers, ids, ref)
    torch_copy.gather_chunks(layers, ids, got)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    fresh = shared.clone()
    views = [fresh[:, :48], fresh[:, 48:]]
    torch_copy.scatter_chunks(got, ids, views)
    assert torch.equal(fresh, shared)


def test_staging_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches larger than the staging cap are split into groups and stay correct."""
    monkeypatch.setattr(torch_copy, "STAGING_MAX_BYTES", 1)
    gen = torch.Generator().manual_seed(11)
    layers = make_layers([64, 64], NUM_BLOCKS, gen)
    ids = make_block_ids(5, 2, NUM_BLOCKS, gen, head=1, tail=1)
    nbytes = chunk_nbytes(layers, 2)
    ref, got = poisoned_slots(5, nbytes), poisoned_slots(5, nbytes)
    reference.gather_chunks(layers, ids, ref)
    torch_copy.gather_chunks(layers, ids, got)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))


def test_all_skipped_is_a_no_op() -> None:
    gen = torch.Generator().manual_seed(13)
    layers = make_layers([16], NUM_BLOCKS, gen)
    ids = torch.full((2, 2), -1, dtype=torch.int64)
    slots = poisoned_slots(2, chunk_nbytes(layers, 2))
    kernels.gather_chunks(layers, ids, slots)
    assert all(bool((s == POISON).all()) for s in slots)


def test_argument_checks() -> None:
    gen = torch.Generator().manual_seed(17)
    layers = make_layers([16, 16], 8, gen)
    slots = poisoned_slots(1, chunk_nbytes(layers, 2))
    with pytest.raises(ValueError, match="block ids"):
        kernels.gather_chunks(layers, torch.tensor([[0, 8]]), slots)
    with pytest.raises(ValueError, match="slots"):
        kernels.gather_chunks(layers, torch.tensor([[0, 1], [2, 3]]), slots)
    with pytest.raises(ValueError, match="holds"):
        kernels.gather_chunks(layers, torch.tensor([[0, 1]]), [torch.zeros(8, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="int64"):
        kernels.gather_chunks(layers, torch.tensor([[0, 1]], dtype=torch.int32), slots)


def test_chunk_nbytes() -> None:
    layers = [torch.zeros((4, p), dtype=torch.int8) for p in (32, 96, 8)]
    assert kernels.chunk_nbytes(layers, 16) == 16 * (32 + 96 + 8)


def test_backend_for_cpu_is_torch() -> None:
    layers = [torch.zeros((4, 32), dtype=torch.int8)]
    assert kernels.backend_for(layers) == "torch"
    assert kernels.backend_for([]) == "torch"


def _triton_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(
    not _triton_ready(),
    reason="needs CUDA + Triton; measured on the H200 by benchmarks/kernels_bench.py "
    "(not in CPU CI)",
)
@pytest.mark.parametrize("pages", [[256, 256, 256], [64, 192, 8, 128], [40, 40]])
def test_triton_matches_reference(pages: list[int]) -> None:
    from kvpanel.kernels import triton_copy

    gen = torch.Generator().manual_seed(19)
    num_chunks, bpc = 8, 16
    layers = make_layers(pages, 512, gen, device="cuda")
    assert kernels.backend_for(layers) == "triton"
    ids = make_block_ids(num_chunks, bpc, 512, gen, head=3, tail=5)
    nbytes = chunk_nbytes(layers, bpc)
    got = [s.pin_memory() for s in poisoned_slots(num_chunks, nbytes)]
    assert triton_copy.unsupported_reason(layers, got) is None
    assert_matches_reference(
        triton_copy.gather_chunks, triton_copy.scatter_chunks, layers, ids, got, gen
    )


def test_plan_groups_stages_whole_chunks_in_groups() -> None:
    from kvpanel.kernels.layout import plan_groups

    ids = torch.arange(5 * 4, dtype=torch.int64).view(5, 4).clone()
    ids[0, :2] = -1  # entered part-way
    ids[4, 3] = -1  # ends early
    groups, direct = plan_groups(ids, 2, whole_only=True)
    assert groups == [[1, 2], [3]] and direct == [0, 4]
    # Scatters stage every chunk: the kernel skips -1 pages itself.
    groups, direct = plan_groups(ids, 2, whole_only=False)
    assert groups == [[0, 1], [2, 3], [4]] and direct == []
    # A staging buffer smaller than one chunk still moves one chunk per group.
    groups, _ = plan_groups(ids, 0, whole_only=False)
    assert groups == [[0], [1], [2], [3], [4]]


@pytest.mark.skipif(
    not _triton_ready(),
    reason="needs CUDA + Triton; checked on the H200 by benchmarks/kernels_bench.py "
    "(not in CPU CI)",
)
@pytest.mark.parametrize("staging_chunks", [1, 3, 100])
@pytest.mark.parametrize("slot_kind", ["separate", "arena"])
def test_staged_matches_reference(
    monkeypatch: pytest.MonkeyPatch, staging_chunks: int, slot_kind: str
) -> None:
    from kvpanel.kernels import staged_copy

    gen = torch.Generator().manual_seed(23)
    num_chunks, bpc, pages = 9, 16, [256] * 4
    layers = make_layers(pages, 512, gen, device="cuda")
    nbytes = chunk_nbytes(layers, bpc)
    # Two halves of ``staging_chunks`` chunks each: 1 and 3 give calls of several groups
    # (shuffles on the side stream), 100 a one-group call (all on the caller's stream).
    monkeypatch.setattr(staged_copy, "STAGING_BYTES", 2 * staging_chunks * nbytes)
    monkeypatch.setattr(staged_copy, "_staging", {})
    if slot_kind == "separate":
        got = [s.pin_memory() for s in poisoned_slots(num_chunks, nbytes)]
    else:  # carved out of one pinned arena, as the CPU tier does: ``slot_runs`` merges runs
        arena = torch.full((num_chunks * nbytes,), POISON, dtype=torch.uint8).pin_memory()
        order = [0, 1, 2, 6, 5, 3, 4, 8, 7]  # runs of 3 and 2, a lone slot, out-of-order ones
        got = [arena[i * nbytes : (i + 1) * nbytes] for i in order]
    assert kernels._triton_module(layers, got)[0] is staged_copy
    ids = make_block_ids(num_chunks, bpc, 512, gen, head=3, tail=5)
    # Partial chunks (first and last) must keep the poison where ids are -1.
    assert_matches_reference(kernels.gather_chunks, kernels.scatter_chunks, layers, ids, got, gen)


@pytest.mark.skipif(
    not _triton_ready(),
    reason="needs CUDA + Triton; checked on the H200 by benchmarks/kernels_bench.py "
    "(not in CPU CI)",
)
def test_staged_calls_back_to_back_need_no_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls enqueued without synchronising reuse both staging halves from two streams
    (the caller's and the side stream); every call must still see its own bytes."""
    from kvpanel.kernels import staged_copy

    gen = torch.Generator().manual_seed(29)
    bpc, pages, calls, per_call = 8, [512] * 3, 4, 5
    layers = make_layers(pages, 1024, gen, device="cuda")
    nbytes = chunk_nbytes(layers, bpc)
    monkeypatch.setattr(staged_copy, "STAGING_BYTES", 2 * 2 * nbytes)  # groups of 2 chunks
    monkeypatch.setattr(staged_copy, "_staging", {})
    stream = torch.cuda.Stream()
    # Disjoint blocks per call, so each call's result is independent of the others.
    perm = torch.randperm(1024, generator=gen)[: calls * per_call * bpc]
    tables = [t.clone() for t in perm.view(calls, per_call, bpc)]
    sources = [
        [random_bytes((nbytes,), gen).pin_memory() for _ in range(per_call)] for _ in range(calls)
    ]
    back = [
        [torch.zeros(nbytes, dtype=torch.uint8).pin_memory() for _ in range(per_call)]
        for _ in range(calls)
    ]
    for i in range(calls):  # scatter i, then gather it back, nothing synchronised in between
        kernels.scatter_chunks(sources[i], tables[i], layers, stream=stream)
        kernels.gather_chunks(layers, tables[i], back[i], stream=stream)
    stream.synchronize()
    for srcs, outs in zip(sources, back, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(srcs, outs, strict=True))


def test_warm_up_is_a_no_op_on_cpu() -> None:
    layers = [torch.full((4, 32), 7, dtype=torch.int8)]
    kernels.warm_up(layers, 2)  # the torch backend has nothing to compile
    assert bool((layers[0] == 7).all())
