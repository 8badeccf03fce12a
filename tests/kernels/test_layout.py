"""kvpanel.kernels.layout: the per-KV-cache geometry cache and per-call checks (CPU)."""

from __future__ import annotations

import pytest
import torch

from kvpanel.kernels.layout import check_args, geometry, plan_groups


def _slot(nbytes: int) -> torch.Tensor:
    return torch.zeros(nbytes, dtype=torch.uint8)


def test_geometry_is_built_once_per_layers_memory() -> None:
    base = torch.zeros((2, 8, 64), dtype=torch.uint8)
    layers = [base[0], base[1]]
    geo = geometry(layers)
    assert geo.pages == [64, 64] and geo.limit == 8
    geo.memo["probe"] = 1
    # A new list over the same memory is the same KV cache: the memo carries over.
    assert geometry([base[0], base[1]]) is geo
    # The same addresses seen with another shape are another cache, never a stale hit.
    other = geometry([base[0].view(16, 32), base[1].view(16, 32)])
    assert other is not geo and other.pages == [32, 32] and other.limit == 16
    assert "probe" not in other.memo


def test_geometry_rejects_bad_layers() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        geometry([])
    with pytest.raises(ValueError, match="2-D int8/uint8"):
        geometry([torch.zeros((4, 8), dtype=torch.float32)])


def test_check_args_reports_holes() -> None:
    layers = [torch.zeros((8, 16), dtype=torch.uint8) for _ in range(3)]
    slots = [_slot(3 * 2 * 16)] * 2
    whole = check_args(layers, torch.tensor([[0, 1], [2, 3]]), slots)
    assert not whole.holes and whole.nbytes == 96 and whole.offsets == [0, 32, 64]
    assert check_args(layers, torch.tensor([[0, 1], [-1, 3]]), slots).holes
    with pytest.raises(ValueError, match=r"\[-1, 8\)"):
        check_args(layers, torch.tensor([[0, 1], [-2, 3]]), slots)
    with pytest.raises(ValueError, match=r"\[-1, 8\)"):
        check_args(layers, torch.tensor([[0, 1], [2, 8]]), slots)
    # The geometry passed in is the one used (its limit bounds the ids).
    small = geometry([t[:4] for t in layers])
    with pytest.raises(ValueError, match=r"\[-1, 4\)"):
        check_args(layers, torch.tensor([[0, 1], [2, 5]]), slots, small)


def test_plan_groups_trusts_no_holes() -> None:
    ids = torch.arange(6, dtype=torch.int64).view(3, 2)
    assert plan_groups(ids, 2, whole_only=True, holes=False) == ([[0, 1], [2]], [])
    ids[1, 0] = -1
    assert plan_groups(ids, 2, whole_only=True, holes=True) == ([[0, 2]], [1])
