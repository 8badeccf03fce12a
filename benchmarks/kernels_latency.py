"""Where a lone one-chunk staged copy spends its time (CUDA only).

A one-chunk staged gather ran at 63 % of a pinned memcpy on the H200 while calls back to back
reached 92 % (docs/benchmarks.md): the difference is latency before the copy engine starts.
This script splits it, gpt-oss-20b geometry (24 layers x 32 KiB pages, 16 blocks per chunk):

- ``call_idle``: CUDA events around one call on an idle GPU (what kernels_bench times);
- ``call_gpu_only``: the same with the stream pre-loaded by a ``torch.cuda._sleep`` so the
  host has enqueued everything before the GPU reaches it: the call's pure GPU time;
- ``host_*``: host-side wall time of the call and of each of its steps (no synchronisation
  inside the timed region), median of ``--reps`` after a warm-up.

    python benchmarks/kernels_latency.py --output latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvpanel import kernels  # noqa: E402
from kvpanel.kernels.layout import check_args, geometry, plan_groups  # noqa: E402

LAYERS, PAGE, BPC, BLOCKS = 24, 32768, 16, 2048


def host_us(fn: Callable[[], object], reps: int) -> float:
    """Median host microseconds of ``fn`` (the GPU drained before each run)."""
    samples = []
    for i in range(reps + 5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if i >= 5:
            samples.append(dt * 1e6)
    torch.cuda.synchronize()
    return statistics.median(samples)


def event_us(fn: Callable[[], object], reps: int, preload_cycles: int = 0) -> float:
    """Median CUDA-event microseconds of ``fn``; ``preload_cycles`` > 0 first queues a sleep
    kernel so the events time the GPU work alone, not the host's enqueueing."""
    samples = []
    for i in range(reps + 5):
        torch.cuda.synchronize()
        if preload_cycles:
            torch.cuda._sleep(preload_cycles)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= 5:
            samples.append(start.elapsed_time(end) * 1e3)
    return statistics.median(samples)


def enter_exit_stream() -> None:
    with torch.cuda.stream(torch.cuda.current_stream()):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    from kvpanel.kernels import staged_copy

    gen = torch.Generator().manual_seed(0)
    layers = [
        torch.randint(-128, 128, (BLOCKS, PAGE), dtype=torch.int8, device="cuda")
        for _ in range(LAYERS)
    ]
    ids = torch.randperm(BLOCKS, generator=gen)[:BPC].view(1, BPC).clone()
    nbytes = kernels.chunk_nbytes(layers, BPC)
    slots = [torch.empty(nbytes, dtype=torch.uint8).pin_memory()]
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    geo = geometry(layers)
    lay = check_args(layers, ids, slots, geo)
    stage = staged_copy._stage_for(layers[0].device, torch.cuda.current_stream(), nbytes).halves[0]
    cycles = 2_000_000  # ~1 ms at ~2 GHz: longer than any call's enqueueing below

    def gather() -> None:
        kernels.gather_chunks(layers, ids, slots)

    def scatter() -> None:
        kernels.scatter_chunks(slots, ids, layers)

    rows: dict[str, float] = {}
    for name, fn in (("gather", gather), ("scatter", scatter)):
        rows[f"call_idle_{name}"] = event_us(fn, args.reps)
        rows[f"call_gpu_only_{name}"] = event_us(fn, args.reps, cycles)
        rows[f"host_call_{name}"] = host_us(fn, args.reps)
    rows["memcpy_idle_d2h"] = event_us(lambda: slots[0].copy_(dev, non_blocking=True), args.reps)
    rows["memcpy_gpu_only_d2h"] = event_us(
        lambda: slots[0].copy_(dev, non_blocking=True), args.reps, cycles
    )
    rows["shuffle_gpu_only"] = event_us(
        lambda: staged_copy._shuffle(layers, ids, stage, lay, geo, to_stage=True), args.reps, cycles
    )
    steps: dict[str, Callable[[], object]] = {
        "geometry": lambda: geometry(layers),
        "pick_backend": lambda: kernels._triton_module(layers, slots),
        "check_args": lambda: check_args(layers, ids, slots, geo),
        "plan_groups": lambda: plan_groups(ids, 5, True, lay.holes),
        "ids_pin": lambda: ids.contiguous().pin_memory(),
        "ids_pin_upload": lambda: ids.contiguous().pin_memory().to("cuda", non_blocking=True),
        "shuffle_launch": lambda: staged_copy._shuffle(layers, ids, stage, lay, geo, True),
        "slot_copy_launch": lambda: slots[0][:nbytes].copy_(stage[:nbytes], non_blocking=True),
        "event_record": lambda: torch.cuda.Event().record(),
        "stream_context": enter_exit_stream,
    }
    for name, step in steps.items():
        rows[f"host_{name}"] = host_us(step, args.reps)
    width = max(map(len, rows))
    for name, us in rows.items():
        print(f"{name:<{width}}  {us:9.1f} us")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
