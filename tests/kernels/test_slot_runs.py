"""Runs of adjacent host slots: one memcpy per run, and never a byte outside a chunk."""

from __future__ import annotations

import torch

from kvpanel.kernels.slot_runs import adjacent_run, copy_runs

N = 48  # chunk bytes


def arena_slots(count: int, slot_bytes: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Slots carved out of one allocation, as the CPU tier does."""
    arena = torch.randint(0, 256, (count * slot_bytes,), dtype=torch.uint8)
    return arena, [arena[i * slot_bytes : (i + 1) * slot_bytes] for i in range(count)]


def test_adjacent_slots_form_one_run() -> None:
    _, slots = arena_slots(6, N)
    assert adjacent_run(slots, [0, 1, 2, 3], 0, N) == 4
    assert adjacent_run(slots, [0, 1, 2, 3], 2, N) == 2
    # Out of order or with a gap: the run stops where the next slot is not the next address.
    assert adjacent_run(slots, [2, 3, 1, 4], 0, N) == 2
    assert adjacent_run(slots, [0, 2, 3], 0, N) == 1
    assert adjacent_run(slots, [0, 2, 3], 1, N) == 2


def test_larger_slots_and_separate_allocations_never_merge() -> None:
    _, wide = arena_slots(4, N + 16)  # the gap bytes between chunks must stay out
    assert adjacent_run(wide, [0, 1, 2, 3], 0, N) == 1
    separate = [torch.zeros(N, dtype=torch.uint8) for _ in range(3)]
    assert adjacent_run(separate, [0, 1, 2], 0, N) == 1


def test_copy_runs_moves_each_chunk_to_its_place_both_ways() -> None:
    gen = torch.Generator().manual_seed(3)
    for slot_bytes, group, copies in ((N, [4, 5, 6, 1, 2], 2), (N + 8, [0, 1, 2], 3)):
        arena, slots = arena_slots(8, slot_bytes)
        before = arena.clone()
        stage = torch.randint(0, 256, (len(group) * N + 5,), dtype=torch.uint8, generator=gen)
        stage_before = stage.clone()
        assert copy_runs(slots, group, stage, N, to_slots=True) == copies
        for k, c in enumerate(group):
            assert torch.equal(slots[c][:N], stage[k * N : (k + 1) * N])
        # Bytes outside the group's chunks (other slots, slot tails) are untouched.
        touched = torch.zeros_like(arena, dtype=torch.bool)
        for c in group:
            touched[c * slot_bytes : c * slot_bytes + N] = True
        assert torch.equal(arena[~touched], before[~touched])
        assert torch.equal(stage, stage_before)

        fresh = torch.zeros_like(stage)
        assert copy_runs(slots, group, fresh, N, to_slots=False) == copies
        assert torch.equal(fresh[: len(group) * N], stage[: len(group) * N])
        assert not bool(fresh[len(group) * N :].any())
