"""The staged backend's PCIe leg: memcpys between host chunk slots and a staging buffer.

Primitives:
- ``adjacent_run(slots, group, k, nbytes)``: how many chunks from ``group[k]`` on can move in
  one memcpy (their slots lie back to back in one host allocation).
- ``copy_runs(slots, group, stage, nbytes, to_slots)``: enqueue the group's memcpys on the
  current stream, one per run.

Why runs: each memcpy launch costs the host ~8 us (H200 host, torch 2.11), and inside vLLM
the worker's thread shares the GIL with the engine's other threads, so every launch is a
point where the copy engine can end up waiting for the host. The CPU tier hands a request
consecutive free slots, so a staging group of ~10 chunks is usually one or two memcpys.
Measured inside vLLM (gpt-oss-20b, H200, five query rounds; one run before, one after): the
loads went from 35.6 to 41.7 GB/s (docs/benchmarks.md).
Kept apart from ``staged_copy`` (which needs Triton) so CPU tests can check it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def adjacent_run(slots: Sequence[torch.Tensor], group: list[int], k: int, nbytes: int) -> int:
    """Chunks from ``group[k]`` on whose slots start exactly ``nbytes`` apart in one storage.

    A slot larger than its chunk breaks every run (the gap bytes must not be copied), and
    so do slots of different allocations, even if their addresses happen to touch."""
    first = slots[group[k]]
    base, storage = first.data_ptr(), None
    run = 1
    while k + run < len(group):
        nxt = slots[group[k + run]]
        if nxt.data_ptr() != base + run * nbytes:
            break
        if storage is None:  # asked only when addresses touch: lone chunks skip it
            storage = first.untyped_storage().data_ptr()
        if nxt.untyped_storage().data_ptr() != storage:
            break
        run += 1
    return run


def copy_runs(
    slots: Sequence[torch.Tensor],
    group: list[int],
    stage: torch.Tensor,
    nbytes: int,
    to_slots: bool,
) -> int:
    """Copy chunk ``group[k]`` between its slot and ``stage[k*nbytes:(k+1)*nbytes]`` for every
    k, one non-blocking copy per run of adjacent slots; returns the number of copies."""
    copies = k = 0
    while k < len(group):
        run = adjacent_run(slots, group, k, nbytes)
        host = slots[group[k]]
        if run > 1:  # widen the first slot's view over the run, inside its own storage
            host = host.as_strided((run * nbytes,), (1,))
        host = host[: run * nbytes]
        dev = stage[k * nbytes : (k + run) * nbytes]
        if to_slots:
            host.copy_(dev, non_blocking=True)
        else:
            dev.copy_(host, non_blocking=True)
        copies += 1
        k += run
    return copies
