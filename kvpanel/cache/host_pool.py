"""Memory for the CPU tier's segments: private to one process, or shared with vLLM's workers.

With tensor parallelism each rank's worker is a process of its own, while the store's index
(keys, pins, LRU, disk and Redis I/O) lives in the scheduler's process. The segments are then
files in a directory under /dev/shm that the scheduler's store creates and each worker maps by
name. A slot holds the chunk of every rank, rank r's shard at ``r * shard_bytes`` (the layout
of vLLM's own SharedOffloadRegion): disk and Redis keep one contiguous payload and one checksum
per chunk, and the bytes of a TP=2 chunk are never mistaken for a TP=1 one (the fingerprint
names the TP size).

Segment indices are never reused within one pool, so the name ``seg-7`` always means the same
memory; a freed segment's file is unlinked at once, and each worker drops its mapping the next
time it looks (on every new mapping, and at most once a second otherwise).

What is trusted: the directory is created 0700 by the engine's own user and only that user's
processes (the engine's workers) map it. A directory left by a killed engine is removed by the
next engine that starts (its owner's pid is dead).

Primitives:
    SegmentMemory           - allocate(index, nbytes) -> tensor; free(index); close()
    PrivateSegments(pin)    - torch.empty in this process (TP=1)
    SharedSegments(dir, slot_bytes, slots_per_segment) - files the workers map (TP>1)
    SegmentMapper(dir)      - a worker's side: slot(slot_id) -> the slot's bytes
    pool_directory(engine_id); segment_slots(slot_bytes) - slots per segment
    write_rank_report / read_rank_reports - what each worker tells the scheduler's store (its
                              engine KV bytes, its copy totals): small JSON files in the pool
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Protocol

import torch

log = logging.getLogger("kvpanel")

SHM_ROOT = Path("/dev/shm")
_LAYOUT = "layout.json"
_OWNER = "owner.pid"
_RECHECK_S = 1.0
SEGMENT_BYTES = 256 << 20


def segment_slots(slot_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> int:
    """Slots per segment (at least one slot, however large)."""
    return max(1, segment_bytes // slot_bytes)


def pool_directory(engine_id: str, root: Path = SHM_ROOT) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in engine_id)[:96]
    return root / f"kvpanel-pool-{safe}"


class SegmentMemory(Protocol):
    def allocate(self, index: int, nbytes: int) -> torch.Tensor: ...

    def free(self, index: int) -> None: ...

    def close(self) -> None: ...


class PrivateSegments:
    """Segments in this process's memory, page-locked for DMA when ``pin`` (TP=1)."""

    def __init__(self, pin: bool = False) -> None:
        self.pin = pin

    def allocate(self, index: int, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)

    def free(self, index: int) -> None:
        pass  # the tensor goes with the tier's last reference

    def close(self) -> None:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_pools(root: Path = SHM_ROOT) -> list[Path]:
    """Remove pool directories whose owner process is gone (an engine killed with SIGKILL)."""
    removed = []
    for path in root.glob("kvpanel-pool-*"):
        try:
            pid = int((path / _OWNER).read_text())
        except (OSError, ValueError):
            continue  # being created, or not ours to judge
        if not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def write_rank_report(directory: Path, rank: int, report: dict[str, object]) -> None:
    """Replace this rank's report (atomically: a reader never sees half of it)."""
    tmp = directory / f".rank-{rank}.json.tmp"
    try:
        tmp.write_text(json.dumps(report))
        os.replace(tmp, directory / f"rank-{rank}.json")
    except OSError:  # the pool is gone (the engine is stopping): nothing to tell
        pass


def read_rank_reports(directory: Path) -> list[dict[str, object]]:
    """Every rank's last report; unreadable ones are left out (figures, never KV)."""
    reports = []
    for path in sorted(directory.glob("rank-*.json")):
        with contextlib.suppress(OSError, ValueError):
            report = json.loads(path.read_text())
            if isinstance(report, dict):
                reports.append(report)
    return reports


class SharedSegments:
    """Segment files in ``directory`` (made here, 0700); the scheduler's store owns them."""

    def __init__(self, directory: Path, slot_bytes: int, slots_per_segment: int) -> None:
        self.directory = Path(directory)
        remove_stale_pools(self.directory.parent)
        try:
            self.directory.mkdir(mode=0o700)
        except FileExistsError:
            raise RuntimeError(
                f"{self.directory} is in use by a running engine with the same engine_id"
            ) from None
        (self.directory / _OWNER).write_text(str(os.getpid()))
        layout = {"slot_bytes": slot_bytes, "slots_per_segment": slots_per_segment}
        tmp = self.directory / f".{_LAYOUT}.tmp"
        tmp.write_text(json.dumps(layout))
        os.replace(tmp, self.directory / _LAYOUT)
        self._closed = False

    def _path(self, index: int) -> Path:
        return self.directory / f"seg-{index}"

    def allocate(self, index: int, nbytes: int) -> torch.Tensor:
        path = self._path(index)
        free = shutil.disk_usage(self.directory).free
        if nbytes > free:
            raise MemoryError(
                f"{self.directory.parent} has {free / 2**30:.2f} GiB free, a CPU-tier segment "
                f"needs {nbytes / 2**30:.2f} GiB (raise the shm size or lower --cpu-cache-gb)"
            )
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, nbytes)
        finally:
            os.close(fd)
        return torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)

    def free(self, index: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(index).unlink()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            shutil.rmtree(self.directory, ignore_errors=True)


class SegmentMapper:
    """A worker's view of a SharedSegments pool: maps segment files on first use.

    Slot ids come from the scheduler for a transfer whose slots it has pinned, so the segment
    file of every slot asked for exists until that transfer is done."""

    def __init__(self, directory: Path, pin: bool = False) -> None:
        self.directory = Path(directory)
        self.pin = pin
        self._slot_bytes = 0
        self._slots_per_segment = 0
        self._mapped: dict[int, torch.Tensor] = {}
        self._registered: set[int] = set()  # page-locked for DMA (cudaHostRegister)
        self._next_check = 0.0

    def _read_layout(self) -> None:
        try:
            layout = json.loads((self.directory / _LAYOUT).read_text())
        except (OSError, ValueError) as e:
            raise RuntimeError(
                f"kvpanel's host pool {self.directory} is missing or unreadable: the worker "
                "was given slots before the scheduler's store created them"
            ) from e
        self._slot_bytes = int(layout["slot_bytes"])
        self._slots_per_segment = int(layout["slots_per_segment"])

    @property
    def slot_bytes(self) -> int:
        if not self._slot_bytes:
            self._read_layout()
        return self._slot_bytes

    def slot(self, slot_id: int) -> torch.Tensor:
        if not self._slots_per_segment:
            self._read_layout()
        index, offset = divmod(slot_id, self._slots_per_segment)
        seg = self._mapped.get(index)
        if seg is None:
            seg = self._map(index)
        elif time.monotonic() >= self._next_check:
            self._drop_freed()
        start = offset * self._slot_bytes
        if start + self._slot_bytes > seg.numel():
            raise KeyError(f"no such slot {slot_id}")
        return seg[start : start + self._slot_bytes]

    def _map(self, index: int) -> torch.Tensor:
        self._drop_freed()
        path = self.directory / f"seg-{index}"
        nbytes = os.stat(path).st_size
        seg = torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)
        if self.pin and _host_register(seg):
            self._registered.add(index)
        self._mapped[index] = seg
        return seg

    def _drop_freed(self) -> None:
        self._next_check = time.monotonic() + _RECHECK_S
        for index in list(self._mapped):
            if not (self.directory / f"seg-{index}").exists():
                self._forget(index)

    def mapped_bytes(self) -> int:
        return sum(t.numel() for t in self._mapped.values())

    def _forget(self, index: int) -> None:
        seg = self._mapped.pop(index)
        if index in self._registered:
            self._registered.discard(index)
            torch.cuda.cudart().cudaHostUnregister(seg.data_ptr())

    def close(self) -> None:
        for index in list(self._mapped):
            self._forget(index)


def _host_register(t: torch.Tensor) -> bool:
    """Page-lock a mapping for full-speed DMA, as vLLM does for its shared region. Pinning
    only buys bandwidth: when it fails the copies still run, pageable and slower."""
    err = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel(), 0)
    if int(err) != 0:
        log.warning(
            "kvpanel: cudaHostRegister of %d bytes failed (%s): pageable copies", t.numel(), err
        )
        return False
    return True
