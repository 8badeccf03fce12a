"""A worker's side of the TP host pool (``host_pool.SharedSegments``): map segments by index.

Slot ids come from the scheduler for a transfer whose slots it has pinned, so the segment file
of every slot asked for exists until that transfer is done (vLLM completes a job only when every
rank reported it). Segments are mapped on first use; a thread drops, once a second, the
mappings of segments the store has freed, so a shrink returns the memory even while the engine
is idle.

``register``/``unregister`` page-lock a mapping for DMA (cudaHostRegister, given by the vLLM
integration) and undo it; ``thread_init`` runs once on the dropping thread (to select the
worker's GPU before it unregisters).

Primitives: SegmentMapper(directory, register, unregister, thread_init).slot(slot_id);
slot_bytes; mapped_bytes(); close().
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from kvpanel.cache.host_pool import LAYOUT, map_segment, open_private_dir

_SWEEP_S = 1.0


class SegmentMapper:
    def __init__(
        self,
        directory: Path,
        register: Callable[[torch.Tensor], bool] | None = None,
        unregister: Callable[[torch.Tensor], None] | None = None,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._register = register
        self._unregister = unregister
        self._thread_init = thread_init
        self._dir_fd: int | None = None
        self._slot_bytes = 0
        self._slots_per_segment = 0
        self._lock = threading.Lock()
        self._mapped: dict[int, torch.Tensor] = {}
        self._registered: set[int] = set()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def _open(self) -> None:
        # Called with the lock held, at the first transfer: the scheduler made the pool by then.
        try:
            dir_fd = open_private_dir(self.directory)
        except OSError as e:
            raise RuntimeError(
                f"kvpanel's host pool {self.directory} is missing or not this user's private "
                f"directory ({e}): the worker was given slots no store of this engine made"
            ) from e
        try:
            fd = os.open(LAYOUT, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            with os.fdopen(fd) as f:
                layout = json.loads(f.read(4096))
            self._slot_bytes = int(layout["slot_bytes"])
            self._slots_per_segment = int(layout["slots_per_segment"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            os.close(dir_fd)
            raise RuntimeError(f"kvpanel's host pool {self.directory}: bad layout ({e})") from e
        self._dir_fd = dir_fd

    @property
    def slot_bytes(self) -> int:
        with self._lock:
            if self._dir_fd is None:
                self._open()
            return self._slot_bytes

    def slot(self, slot_id: int) -> torch.Tensor:
        """The slot's bytes (all ranks' shards), mapped from its segment file."""
        with self._lock:
            if self._dir_fd is None:
                self._open()
            index, offset = divmod(slot_id, self._slots_per_segment)
            seg = self._mapped.get(index)
            if seg is None:
                seg = self._map(index)
            start = offset * self._slot_bytes
            if slot_id < 0 or start + self._slot_bytes > seg.numel():
                raise KeyError(f"no such slot {slot_id}")
            return seg[start : start + self._slot_bytes]

    def _map(self, index: int) -> torch.Tensor:
        assert self._dir_fd is not None
        try:
            seg = map_segment(self._dir_fd, f"seg-{index}")
        except OSError as e:  # never created here: a missing segment is a protocol error
            raise KeyError(f"kvpanel host pool: segment {index} is not there ({e})") from e
        if self._register is not None and self._register(seg):
            self._registered.add(index)
        self._mapped[index] = seg
        if self._sweeper is None:
            self._sweeper = threading.Thread(
                target=self._sweep, name="kvpanel-pool-sweep", daemon=True
            )
            self._sweeper.start()
        return seg

    def _sweep(self) -> None:
        if self._thread_init is not None:
            self._thread_init()
        while not self._stop.wait(_SWEEP_S):
            with self._lock:
                self._drop_freed()

    def _drop_freed(self) -> None:
        if self._dir_fd is None:
            return
        for index in list(self._mapped):
            try:
                os.stat(f"seg-{index}", dir_fd=self._dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                self._forget(index)
            except OSError:
                continue

    def _forget(self, index: int) -> None:
        seg = self._mapped.pop(index)
        if index in self._registered:
            self._registered.discard(index)
            if self._unregister is not None:
                self._unregister(seg)

    def drop_freed(self) -> None:
        with self._lock:
            self._drop_freed()

    def mapped_bytes(self) -> int:
        with self._lock:
            return sum(t.numel() for t in self._mapped.values())

    def registered(self) -> int:
        with self._lock:
            return len(self._registered)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for index in list(self._mapped):
                self._forget(index)
            if self._dir_fd is not None:
                os.close(self._dir_fd)
                self._dir_fd = None
