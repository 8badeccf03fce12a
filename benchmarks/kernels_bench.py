"""Benchmark of kvpanel's chunk copy paths (staged, direct Triton, torch, DMA vs pinned memcpy).

Self-contained (no vLLM). gpt-oss-20b geometry: 24 layers, 8 KV heads, head dim 64,
16-token blocks, bf16 -> 32768-byte pages per layer block; 256-token chunks (16 blocks).
For 1, 8 and 64 chunks with random non-contiguous block ids it first checks the Triton
path bit-exactly against the torch backend / Python reference on random data (every
byte written, -1 entries untouched), then times with CUDA events (median of --reps):
the staged path (copy engine + Triton shuffle; the default; for 1 and 8 chunks also as 64/n
calls back to back, "b2b_*", against memcpys timed alike), the direct Triton kernel at a few
grid sizes, the torch fallback, vLLM's swap_blocks_batch when vLLM is installed, and one
contiguous pinned memcpy of the same byte count; at 64 chunks also staged, direct and memcpy
while another stream runs matmuls ("busy_*": copies next to a model's forward pass).
``--dry-run`` runs tiny sizes on CPU, torch only.

    python benchmarks/kernels_bench.py            # H200: < 2 minutes
    python benchmarks/kernels_bench.py --dry-run  # anywhere
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels_check import POISON, check, make_slots  # noqa: E402

from kvpanel.kernels import chunk_nbytes, torch_copy  # noqa: E402

REF_H2D_GBPS = 52.8  # reference figures the brief compares against
REF_D2H_GBPS = 55.3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, torch backend only")
    p.add_argument("--num-blocks", type=int, default=20000)
    p.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--no-fp8", action="store_true", help="skip the fp8 (half-page) variant")
    p.add_argument("--programs", type=int, nargs="+", default=[32, 64, 132])
    p.add_argument(
        "--arena-gb",
        type=float,
        default=0.0,
        help="take the slots at random places of a kvpanel CPU tier of this size (pinned "
        "256 MiB segments, as `kvpanel serve` allocates it) instead of a few small pools",
    )
    p.add_argument(
        "--adjacent",
        action="store_true",
        help="with --arena-gb: consecutive tier slots from a random start, as the tier hands a "
        "request its slots (the staged path then moves runs of them in one memcpy)",
    )
    args = p.parse_args()
    if args.adjacent and not args.arena_gb:
        p.error("--adjacent needs --arena-gb")
    return args


def timed(fn: Callable[[], object], reps: int, cuda: bool) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after warm-up (CUDA events on GPU)."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def timed_back_to_back(fn: Callable[[], object], calls: int, reps: int) -> float:
    """Median seconds per call of ``calls`` calls enqueued back to back (one CUDA event pair
    around them): a busy server's throughput, where the host prepares call k+1 while the GPU
    runs call k. ``timed`` is one call on an idle GPU: its latency, host work included."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(samples)


def random_cache(layers: int, blocks: int, page: int, device: str) -> list[torch.Tensor]:
    return [
        torch.randint(-128, 128, (blocks, page), dtype=torch.int8, device=device)
        for _ in range(layers)
    ]


def contended(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of ``fn`` on its own stream while another stream runs bf16 matmuls
    (the model's forward pass in miniature): copies that need SMs slow down, copy-engine
    transfers should not."""
    side = torch.cuda.Stream()
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    copy_stream = torch.cuda.Stream(priority=-1)  # as the worker's streams
    with torch.cuda.stream(side):
        for _ in range(600):  # ~0.8 s of backlog, longer than the timed copies
            a = a @ a
            a.mul_(1e-3)
    with torch.cuda.stream(copy_stream):
        t = timed(fn, reps, True)
    side.synchronize()
    return t


def vector_width_note() -> str:
    """Whether the compiled kernel uses 128-bit global loads (needs Triton + CUDA)."""
    from kvpanel.kernels import triton_copy

    desc = torch.zeros((3, 1), dtype=torch.int64, device="cuda")
    k = triton_copy._copy_pages_kernel[(1,)](
        desc, 0, WORDS=4096, UNIT=2, BLOCK=triton_copy.BLOCK_WORDS, num_warps=triton_copy.NUM_WARPS
    )
    ptx = k.asm.get("ptx", "")
    wide = any(s in ptx for s in ("ld.global.v2.b64", "ld.global.v2.u64", "ld.global.v4.b32"))
    return "128-bit loads" if wide else "NO 128-bit loads found in PTX"


def time_one(
    layers: list[torch.Tensor],
    ids: torch.Tensor,
    slots: list[torch.Tensor],
    total: int,
    backend: str,
    args: argparse.Namespace,
    cuda: bool,
) -> dict[str, float]:
    """Median seconds of every timed operation for one batch of chunks."""
    from kvpanel import kernels

    device = layers[0].device
    dev_buf = torch.empty(total, dtype=torch.uint8, device=device)
    host_buf = torch.empty(total, dtype=torch.uint8, pin_memory=cuda)
    reps = args.reps
    t: dict[str, float] = {
        "memcpy_d2h": timed(lambda: host_buf.copy_(dev_buf, non_blocking=True), reps, cuda),
        "memcpy_h2d": timed(lambda: dev_buf.copy_(host_buf, non_blocking=True), reps, cuda),
        "torch_gather": timed(lambda: torch_copy.gather_chunks(layers, ids, slots), reps, cuda),
        "torch_scatter": timed(lambda: torch_copy.scatter_chunks(slots, ids, layers), reps, cuda),
    }
    if backend != "triton":
        return t
    from kvpanel.kernels import staged_copy, triton_copy

    assert kernels._triton_module(layers, slots)[0] is staged_copy, "staged path not chosen"
    for p in args.programs:
        t[f"direct_gather_p{p}"] = timed(
            functools.partial(triton_copy.gather_chunks, layers, ids, slots, num_programs=p),
            reps,
            cuda,
        )
        t[f"direct_scatter_p{p}"] = timed(
            functools.partial(triton_copy.scatter_chunks, slots, ids, layers, num_programs=p),
            reps,
            cuda,
        )
    # The package's default CUDA path (staged), as the worker calls it.
    t["staged_gather"] = timed(lambda: kernels.gather_chunks(layers, ids, slots), reps, cuda)
    t["staged_scatter"] = timed(lambda: kernels.scatter_chunks(slots, ids, layers), reps, cuda)
    calls = 64 // int(ids.shape[0])
    if calls > 1:  # small calls back to back, against memcpys of the same size back to back
        for op, fn in (
            ("staged_gather", lambda: kernels.gather_chunks(layers, ids, slots)),
            ("staged_scatter", lambda: kernels.scatter_chunks(slots, ids, layers)),
            ("memcpy_d2h", lambda: host_buf.copy_(dev_buf, non_blocking=True)),
            ("memcpy_h2d", lambda: dev_buf.copy_(host_buf, non_blocking=True)),
        ):
            t[f"b2b_{op}"] = timed_back_to_back(fn, calls, reps)
    if ids.shape[0] >= 64:  # while the GPU computes, as in a serving engine
        for name, mod in (("staged", staged_copy), ("direct", triton_copy)):
            t[f"busy_{name}_gather"] = contended(
                functools.partial(mod.gather_chunks, layers, ids, slots), reps
            )
            t[f"busy_{name}_scatter"] = contended(
                functools.partial(mod.scatter_chunks, slots, ids, layers), reps
            )
        t["busy_memcpy_d2h"] = contended(lambda: host_buf.copy_(dev_buf, non_blocking=True), reps)
        t["busy_memcpy_h2d"] = contended(lambda: dev_buf.copy_(host_buf, non_blocking=True), reps)
    from kvpanel.kernels import dma_copy

    if dma_copy.available():  # vLLM's swap_blocks_batch on the same data (cuMemcpyBatchAsync)
        t["dma_gather"] = timed(lambda: dma_copy.gather_chunks(layers, ids, slots), reps, cuda)
        t["dma_scatter"] = timed(lambda: dma_copy.scatter_chunks(slots, ids, layers), reps, cuda)
        t["vllm_triton_scatter"] = timed(
            lambda: dma_copy.vllm_triton_scatter_chunks(slots, ids, layers), reps, cuda
        )
    return t


def tier_slots(tier: Any, n: int, gen: torch.Generator, adjacent: bool) -> list[torch.Tensor]:
    """``n`` distinct slots at random places of the tier's whole pool (its segments were
    pinned when it was built), or ``adjacent``: ``n`` consecutive ones from a random start.
    Filled so that nothing reads never-touched pages."""
    count = tier.capacity_bytes // tier.slot_bytes
    if adjacent:
        start = int(torch.randint(0, max(1, count - n + 1), (1,), generator=gen))
        picks = torch.arange(start, start + n)
    else:
        picks = torch.randperm(count, generator=gen)[:n]
    slots = [tier.view(int(i)) for i in picks]
    for s in slots:
        s.fill_(POISON)
    return slots


def bench_variant(name: str, page: int, args: argparse.Namespace, cuda: bool) -> list[dict]:
    from kvpanel import kernels

    device = "cuda" if cuda else "cpu"
    num_layers, bpc = (24, 16) if cuda else (4, 4)
    blocks = args.num_blocks if cuda else 256
    gen = torch.Generator().manual_seed(0)
    layers = random_cache(num_layers, blocks, page, device)
    backend = kernels.backend_for(layers)
    nbytes = chunk_nbytes(layers, bpc)
    print(
        f"## {name}: {num_layers} layers x {page} B pages, chunk {nbytes / 2**20:.2f} MiB, "
        f"backend {backend}",
        flush=True,
    )
    tier = None
    if args.arena_gb:
        from kvpanel.cache.cpu_tier import CpuTier

        tier = CpuTier(int(args.arena_gb * 2**30), nbytes, pin=cuda)
        name = f"{name} tier{args.arena_gb:g}G{' adjacent' if args.adjacent else ''}"
        print(f"  slots: a {args.arena_gb:g} GiB CPU tier ({tier.capacity_bytes // nbytes} slots)")
    rows = []
    for n in args.chunks:
        ok = check(layers, n, bpc, cuda, gen)
        print(f"  {n} chunks correctness: {ok}", flush=True)
        ids = torch.randperm(blocks, generator=gen)[: n * bpc].view(n, bpc).clone()
        total = n * nbytes
        if tier is None:
            slots = make_slots(n, nbytes, 4, cuda)
        else:
            slots = tier_slots(tier, n, gen, args.adjacent)
        t = time_one(layers, ids, slots, total, backend, args, cuda)
        gbps = {k: total / v / 1e9 for k, v in t.items()}
        rows.append(
            {
                "variant": name,
                "page_bytes": page,
                "chunks": n,
                "bytes": total,
                "correct": ok,
                "seconds": t,
                "gbps": gbps,
            }
        )
    layers.clear()
    if cuda:
        torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| variant | chunks | MiB | op | GB/s | % memcpy | % ref (52.8 H2D / 55.3 D2H) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = r["gbps"]
        for op in sorted(g):
            if op.startswith(("memcpy", "b2b_memcpy")):
                continue
            d2h = "gather" in op or op.endswith("d2h")
            # b2b_* (back-to-back calls) against memcpys timed the same way
            prefix = "b2b_" if op.startswith("b2b_") else ""
            base = g[prefix + ("memcpy_d2h" if d2h else "memcpy_h2d")]
            ref = REF_D2H_GBPS if d2h else REF_H2D_GBPS
            out.append(
                f"| {r['variant']} | {r['chunks']} | {r['bytes'] / 2**20:.0f} | {op} | "
                f"{g[op]:.1f} | {100 * g[op] / base:.0f}% | {100 * g[op] / ref:.0f}% |"
            )
        for op in ("memcpy_d2h", "memcpy_h2d", "b2b_memcpy_d2h", "b2b_memcpy_h2d"):
            if op not in g:
                continue
            ref = REF_D2H_GBPS if op.endswith("d2h") else REF_H2D_GBPS
            out.append(
                f"| {r['variant']} | {r['chunks']} | {r['bytes'] / 2**20:.0f} | {op} | "
                f"{g[op]:.1f} | 100% | {100 * g[op] / ref:.0f}% |"
            )
    return "\n".join(out)


def main() -> int:
    args = parse_args()
    cuda = torch.cuda.is_available() and not args.dry_run
    if args.dry_run:
        args.chunks, args.reps = [1, 2, 4], 3
        os.environ["KVPANEL_KERNEL_BACKEND"] = "torch"
    elif not cuda:
        print("no CUDA device: use --dry-run", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"torch": torch.__version__, "dry_run": args.dry_run}
    if cuda:
        meta["device"] = torch.cuda.get_device_name()
        try:
            import triton

            meta["triton"] = triton.__version__
            meta["vector_width"] = vector_width_note()
            print(f"kernel: {meta['vector_width']}", flush=True)
        except ImportError:
            meta["triton"] = None
    variants = [("bf16", 32768 if cuda else 256)]
    if not args.no_fp8:
        variants.append(("fp8", 16384 if cuda else 128))
    rows = []
    for name, page in variants:
        rows += bench_variant(name, page, args, cuda)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    print()
    print(table(rows))
    print(
        f"\nwall {meta['wall_s']} s; all correct: {all(all(r['correct'].values()) for r in rows)}"
    )
    out = os.environ.get("OUT")
    if out:
        Path(out, "kernels_bench.json").write_text(
            json.dumps({"meta": meta, "rows": rows}, indent=1)
        )
    return 0 if all(all(r["correct"].values()) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
