"""How fast this disk reads chunk files back, measured once at start for the load planner.

Primitives:
- ``probe_read_rate``: bytes/s reading some chunk files on several threads, as promotions do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import torch

from kvpanel.cache.keys import ChunkKey


def probe_read_rate(
    read: Callable[[ChunkKey, memoryview], bool],
    keys: Sequence[ChunkKey],
    payload_bytes: int,
    threads: int = 4,
) -> float | None:
    """Bytes/s reading ``keys`` with ``read`` on ``threads`` threads (what promotions do), or
    None without files to read. The files are read as promotions would read them, so a page
    cache that holds them shows its speed."""
    if not keys:
        return None
    bufs = [torch.empty(payload_bytes, dtype=torch.uint8) for _ in range(threads)]
    done = [0]
    lock = threading.Lock()

    def worker(i: int) -> None:
        for key in keys[i::threads]:
            if read(key, bufs[i].numpy().data.cast("B")):
                with lock:
                    done[0] += payload_bytes

    t0 = time.monotonic()
    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - t0
    return done[0] / elapsed if done[0] and elapsed > 0 else None
