"""Copy speed between the GPU and the TP host pool (kvpanel.cache.host_pool), side by side with
torch's own pinned memory and with pageable memory, in one run.

The pool's segments are /dev/shm files that each rank's worker maps and page-locks with
cudaHostRegister (``SegmentMapper(register=...)``, torch's cudart binding here as in vLLM
before 0.32); this checks that the registration takes and that copies from such a mapping run
at the pinned rate.

    python benchmarks/host_pool_bench.py [--gib 1] [--repeats 5] [--json OUT.json]
Without CUDA it only checks that a mapping sees the store's bytes (no speeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvpanel.cache.host_pool import SharedSegments  # noqa: E402
from kvpanel.cache.host_pool_map import SegmentMapper  # noqa: E402

SEG = 256 << 20


def register(t: torch.Tensor) -> bool:
    return int(torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel(), 0)) == 0


def unregister(t: torch.Tensor) -> None:
    torch.cuda.cudart().cudaHostUnregister(t.data_ptr())


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


def time_copies(dst: list[torch.Tensor], src: list[torch.Tensor], repeats: int) -> float:
    """Best of ``repeats`` wall times of copying every src into its dst on one stream."""
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for d, s in zip(dst, src, strict=True):
            d.copy_(s, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n_seg = max(1, int(args.gib * (1 << 30)) // SEG)
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    pool = root / f"kvpanel-pool-bench-{os.getpid()}"
    owner = SharedSegments(pool, slot_bytes=SEG, slots_per_segment=1)
    segs = [owner.allocate(i, SEG) for i in range(n_seg)]
    for i, s in enumerate(segs):
        s.fill_(i + 1)
    cuda = torch.cuda.is_available()
    mapper = SegmentMapper(pool, register, unregister) if cuda else SegmentMapper(pool)
    t0 = time.perf_counter()
    mapped = [mapper.slot(i) for i in range(n_seg)]  # one slot per segment here
    map_s = time.perf_counter() - t0
    assert all(int(m[0]) == i + 1 == int(m[-1]) for i, m in enumerate(mapped)), "wrong bytes"
    result: dict = {
        "bytes": n_seg * SEG,
        "segments": n_seg,
        "map_and_register_s": round(map_s, 4),
        "registered": mapper.registered(),
        "cuda": cuda,
    }
    if cuda:
        nbytes = n_seg * SEG
        dev = [torch.empty(SEG, dtype=torch.uint8, device="cuda") for _ in range(n_seg)]
        pinned = [torch.empty(SEG, dtype=torch.uint8, pin_memory=True) for _ in range(n_seg)]
        pageable = [torch.empty(SEG, dtype=torch.uint8) for _ in range(n_seg)]
        for name, host in (("pool", mapped), ("torch_pinned", pinned), ("pageable", pageable)):
            h2d = time_copies(dev, host, args.repeats)
            d2h = time_copies(host, dev, args.repeats)
            result[f"h2d_{name}_gbps"] = round(gbps(nbytes, h2d), 2)
            result[f"d2h_{name}_gbps"] = round(gbps(nbytes, d2h), 2)
        # What came back from the GPU into the pool is what went out.
        dev[0].fill_(201)
        mapped[0].copy_(dev[0])
        torch.cuda.synchronize()
        assert int(segs[0][12345]) == 201, "the store does not see the worker's copy"
    mapper.close()
    owner.close()
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
