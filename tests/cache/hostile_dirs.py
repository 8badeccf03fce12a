"""Helpers for the hostile disk-directory tests: valid chunk files, a tier opened with a
deadline (a hang fails the test instead of blocking it), FIFOs let go."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from conftest import CHUNK_BYTES, key, payload

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.disk_tier import DiskTier
from kvpanel.cache.keys import Fingerprint

FILE_BYTES = fmt.HEADER_BYTES + CHUNK_BYTES
DISK_BYTES = 100 * FILE_BYTES


def data(i: int) -> bytes:
    return bytes(payload(i).tolist())


def path_of(fp_dir: Path, i: int) -> Path:
    return fmt.chunk_path(fp_dir, key(i))


def key_in_other_shard(fp_dir: Path, *avoid: int) -> int:
    """A key id whose shard folder differs from those of ``avoid``."""
    taken = {path_of(fp_dir, i).parent.name for i in avoid}
    return next(i for i in range(1000, 2000) if path_of(fp_dir, i).parent.name not in taken)


def fill(root: Path, fp: Fingerprint, ids: list[int]) -> Path:
    """Write valid chunks ``ids`` with a tier that is closed again; returns the fp dir."""
    t = DiskTier(root, fp, DISK_BYTES)
    try:
        for i in ids:
            assert t.put(key(i), data(i))
    finally:
        t.close()
    return t.dir


def unblock_fifo(path: Path) -> None:
    """Let a reader stuck opening ``path`` go (the old code blocked there forever)."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def open_in_thread(root: Path, fp: Fingerprint, timeout: float = 5.0) -> DiskTier:
    """``DiskTier(...)`` that must come up within ``timeout``: a hang fails the test."""
    box: list[object] = []

    def build() -> None:
        try:
            box.append(DiskTier(root, fp, DISK_BYTES))
        except BaseException as e:  # surfaced below
            box.append(e)

    th = threading.Thread(target=build, daemon=True)
    th.start()
    th.join(timeout)
    assert box, f"DiskTier() did not come up within {timeout}s"
    if isinstance(box[0], BaseException):
        raise box[0]
    assert isinstance(box[0], DiskTier)
    return box[0]


@contextlib.contextmanager
def opened(root: Path, fp: Fingerprint) -> Iterator[DiskTier]:
    t = open_in_thread(root, fp)
    try:
        yield t
    finally:
        t.close()
