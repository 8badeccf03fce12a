"""Correctness checks for ``kernels_bench.py``: every copy path, bit-exact, on random data.

Each scatter check first writes fresh random bytes into its target blocks, so a path that
writes nothing, or only rewrites what an earlier check put there, cannot pass.
"""

from __future__ import annotations

from typing import Any

import torch

from kvpanel.kernels import chunk_nbytes, reference, torch_copy

POISON = 0xA5


def make_slots(n: int, nbytes: int, pools: int, cuda: bool) -> list[torch.Tensor]:
    """``n`` slots carved from a few big pinned pools, with gaps so they are not adjacent."""
    stride = nbytes + 4096
    per_pool = -(-n // pools)
    slots: list[torch.Tensor] = []
    for _ in range(pools):
        pool = torch.empty(per_pool * stride, dtype=torch.uint8, pin_memory=cuda)
        pool.fill_(POISON)
        for k in range(per_pool):
            if len(slots) < n:
                slots.append(pool[k * stride : k * stride + nbytes])
    return slots


def scramble(layers: list[torch.Tensor], ids: torch.Tensor) -> None:
    """New random bytes in the blocks ``ids`` names, so a scatter that writes nothing (or
    rewrites what an earlier check already put there) cannot pass."""
    valid = ids[ids >= 0].to(layers[0].device)
    for t in layers:
        shape = (len(valid), t.shape[1])
        t[valid] = torch.randint(-128, 128, shape, dtype=t.dtype, device=t.device)


def check(
    layers: list[torch.Tensor], n: int, bpc: int, cuda: bool, gen: torch.Generator
) -> dict[str, Any]:
    """Bit-exact check of the CUDA backend (triton) against torch/reference, partial chunks."""
    from kvpanel import kernels

    num_blocks = layers[0].shape[0]
    ids = torch.randperm(num_blocks, generator=gen)[: n * bpc].view(n, bpc).clone()
    ids[0, :2] = -1
    ids[-1, bpc - 3 :] = -1
    nbytes = chunk_nbytes(layers, bpc)
    expect = make_slots(n, nbytes, 2, cuda)
    if n <= 8:
        reference.gather_chunks(layers, ids, expect)
    else:
        torch_copy.gather_chunks(layers, ids, expect)
    got = make_slots(n, nbytes, 2, cuda)
    kernels.gather_chunks(layers, ids, got)
    if cuda:
        torch.cuda.synchronize()
    gather_ok = all(torch.equal(a, b) for a, b in zip(expect, got, strict=True))
    # -1 sub-blocks of chunk 0 must still hold the poison in every layer.
    page = layers[0].shape[1]
    head_ok = all(
        bool((got[0][li * bpc * page : li * bpc * page + 2 * page] == POISON).all())
        for li in range(len(layers))
    )
    # Scatter into a second set of random blocks: expected via torch, actual via backend.
    dst_ids = torch.randperm(num_blocks, generator=gen)[: n * bpc].view(n, bpc).clone()
    dst_ids[0, :2] = -1
    dst_ids[-1, bpc - 3 :] = -1
    scramble(layers, dst_ids)  # fresh bytes: a no-op scatter must fail
    want = [t.clone() for t in layers]
    torch_copy.scatter_chunks(got, dst_ids, want)
    kernels.scatter_chunks(got, dst_ids, layers)
    if cuda:
        torch.cuda.synchronize()
    scatter_ok = all(torch.equal(a, b) for a, b in zip(want, layers, strict=True))
    del want
    result = {"gather_exact": gather_ok, "head_untouched": head_ok, "scatter_exact": scatter_ok}
    if cuda:  # every chunk whole: the staged path takes all of them (partial ones go direct)
        result.update(check_whole(layers, n, bpc, gen))
    from kvpanel.kernels import dma_copy

    if cuda and dma_copy.available():  # vLLM's swap_blocks_batch must agree bit for bit too
        # The scatter above rewrote some of the blocks ids point at: expect anew.
        torch_copy.gather_chunks(layers, ids, expect)
        dma = make_slots(n, nbytes, 2, cuda)
        dma_copy.gather_chunks(layers, ids, dma)
        torch.cuda.synchronize()
        result["dma_gather_exact"] = all(
            torch.equal(a, b) for a, b in zip(expect, dma, strict=True)
        )
        for name, scatter in (
            ("dma_scatter_exact", dma_copy.scatter_chunks),
            ("vllm_triton_scatter_exact", dma_copy.vllm_triton_scatter_chunks),
        ):
            scramble(layers, dst_ids)  # fresh bytes: a no-op scatter must fail
            want = [t.clone() for t in layers]
            torch_copy.scatter_chunks(dma, dst_ids, want)
            scatter(dma, dst_ids, layers)
            torch.cuda.synchronize()
            result[name] = all(torch.equal(a, b) for a, b in zip(want, layers, strict=True))
            del want
    return result


def check_whole(
    layers: list[torch.Tensor], n: int, bpc: int, gen: torch.Generator
) -> dict[str, bool]:
    """Staged and direct Triton paths, bit-exact against torch, on fully valid chunks."""
    from kvpanel.kernels import staged_copy, triton_copy

    num_blocks = layers[0].shape[0]
    nbytes = chunk_nbytes(layers, bpc)
    ids = torch.randperm(num_blocks, generator=gen)[: n * bpc].view(n, bpc).clone()
    out: dict[str, bool] = {}
    for name, mod in (("staged", staged_copy), ("direct", triton_copy)):
        expect = make_slots(n, nbytes, 2, True)  # anew: the previous scatter rewrote blocks
        torch_copy.gather_chunks(layers, ids, expect)
        got = make_slots(n, nbytes, 2, True)
        mod.gather_chunks(layers, ids, got)
        torch.cuda.synchronize()
        out[f"{name}_gather_whole_exact"] = all(
            torch.equal(a, b) for a, b in zip(expect, got, strict=True)
        )
        dst = torch.randperm(num_blocks, generator=gen)[: n * bpc].view(n, bpc).clone()
        scramble(layers, dst)  # fresh bytes: a no-op scatter must fail
        want = [t.clone() for t in layers]
        torch_copy.scatter_chunks(got, dst, want)
        mod.scatter_chunks(got, dst, layers)
        torch.cuda.synchronize()
        out[f"{name}_scatter_whole_exact"] = all(
            torch.equal(a, b) for a, b in zip(want, layers, strict=True)
        )
        del want
    return out
