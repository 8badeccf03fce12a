"""What writing the disk tier cost, from a ``run_h200.sh disk20b`` result: each mode's warm-up
round, the disk tier's chunks, dropped chunks and write rate beside ``dd``'s, and the warm-up
round with the disk tier over the round without it (issue 17: within 5 %).

    python benchmarks/gpu/disk_summary.py COMPARE.json DD_WRITE_GBPS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def summary(doc: dict, dd_write_gbps: float) -> list[str]:
    lines = []
    warmup: dict[str, float] = {}
    for m in doc["modes"]:
        w = ((m.get("result") or {}).get("rounds") or {}).get("warmup") or {}
        if w.get("total_s") is not None:
            warmup[m["mode"]] = w["total_s"]
        disk = ((m.get("last_status") or {}).get("tiers") or {}).get("disk") or {}
        rate = disk.get("write_bytes_per_s")
        if rate:
            write = f"write rate {rate / 1e9:.2f} GB/s"
        elif disk.get("chunks"):  # BusyRate wants 0.05 s of writing: tiny test models
            write = "write rate not measured (too little written)"
        else:
            write = "no writes"
        if rate and dd_write_gbps > 0:
            write += f" = {rate / 1e9 / dd_write_gbps:.2f} x dd's {dd_write_gbps:.2f} GB/s"
        lines.append(
            f"{m['mode']}: warm-up round {_s(w.get('total_s'))},"
            f" mean TTFT {_s(w.get('mean_ttft_s'))};"
            f" disk tier: {disk.get('chunks', 0)} chunks, {disk.get('dropped', 0)} dropped, {write}"
        )
    if "kvpanel" in warmup and "kvpanel-cpu" in warmup:
        ratio = warmup["kvpanel"] / warmup["kvpanel-cpu"]
        lines.append(f"warm-up round with / without the disk tier: {ratio:.3f} x")
    return lines


def main() -> None:
    doc = json.loads(Path(sys.argv[1]).read_text())
    print("\n".join(summary(doc, float(sys.argv[2]))))


if __name__ == "__main__":
    main()
