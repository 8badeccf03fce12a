"""The Redis tier's write-behind queue: ``put_async`` queues a SET, one writer thread
batches whatever queued meanwhile into one pipeline, and a full queue drops (counted) rather than
stall the engine. A mixin of ``RemoteTier`` (it shares the tier's lock, key bookkeeping and
connection)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from kvpanel.cache import remote_format as fmt
from kvpanel.cache.buffers import Payload, as_byte_view, payload_nbytes
from kvpanel.cache.keys import ChunkKey
from kvpanel.cache.remote_client import RemoteLink
from kvpanel.cache.secret import CacheSecret
from kvpanel.cache.stats import TierCounters

OnDone = Callable[[bool], None]
Job = tuple[ChunkKey, Payload, OnDone | None]
_ERRORS = fmt.ERRORS


class WriteBehind:
    # Owned by RemoteTier (set in its __init__).
    url: fmt.RemoteUrl
    _lock: threading.Lock
    _link: RemoteLink
    _closed: bool
    _queue: queue.Queue[Job | None]
    _queued: set[ChunkKey]
    _misses: OrderedDict[ChunkKey, float]
    _written: OrderedDict[ChunkKey, float]
    _max_misses: int
    _miss_ttl_s: float
    _batch_bytes: int
    _counters: TierCounters
    _fp_digest: bytes
    _fp_hex: str
    _secret: CacheSecret | None

    def _on_error(self, e: BaseException) -> None: ...

    def _note_stored(self, keys: Sequence[ChunkKey]) -> None: ...

    def put_async(self, key: ChunkKey, data: Payload, on_done: OnDone | None = None) -> bool:
        """Queue a SET; False if refused (unhealthy, closed, queue full: counted as dropped).

        ``data`` must stay unchanged until ``on_done(ok)`` runs (on the writer thread, right
        after the value was encoded, or inline for a duplicate). Not called on refusal.
        """
        healthy = self._link.healthy
        with self._lock:
            if self._closed or not healthy:
                return False
            self._misses.pop(key, None)  # we are about to have it
            self._written[key] = time.monotonic() + self._miss_ttl_s
            self._written.move_to_end(key)
            while len(self._written) > self._max_misses:
                self._written.popitem(last=False)
            duplicate = key in self._queued
            if not duplicate:
                try:
                    self._queue.put_nowait((key, data, on_done))
                except queue.Full:
                    # Never stall the engine for the shared tier: losing a write costs a miss.
                    self._counters.add(dropped=1)
                    return False
                self._queued.add(key)
        if duplicate and on_done is not None:
            on_done(True)
        return True

    def _send(self, items: list[tuple[ChunkKey, bytes, int]]) -> bool:
        if not items:
            return True
        try:
            client = self._link.client()
            pipe = client.pipeline(transaction=False)  # cluster-safe: keys span slots
            for key, value, _n in items:
                pipe.set(fmt.redis_key(self._fp_hex, key), value, ex=self.url.ttl_s)
            pipe.execute()
        except _ERRORS as e:
            self._on_error(e)
            return False
        self._counters.add(bytes_in=sum(n for _k, _v, n in items))
        return True

    def _writer_loop(self) -> None:
        stop = False
        while not stop:
            job = self._queue.get()
            if job is None:
                return
            batch, size = [job], payload_nbytes(job[1])
            while size < self._batch_bytes:  # whatever queued meanwhile goes in one pipeline
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True  # close(): send what we have, then exit
                    break
                batch.append(more)
                size += payload_nbytes(more[1])
            self._write_batch(batch)

    def _write_batch(self, batch: list[Job]) -> None:
        items: list[tuple[ChunkKey, bytes, int]] = []
        try:
            for key, data, on_done in batch:
                ok = False
                try:
                    payload = as_byte_view(data)
                    value = fmt.encode(self._fp_digest, key, payload, self._secret)
                    items.append((key, value, payload.nbytes))
                    ok = True
                except (ValueError, TypeError):
                    self._counters.add(errors=1)
                finally:
                    # The value is a copy now: let the caller reuse its buffer (a CPU slot)
                    # before the network round trip, not after it.
                    if on_done is not None:
                        with contextlib.suppress(Exception):
                            on_done(ok)
            if self._link.healthy and items and self._send(items):
                self._note_stored([key for key, _v, _n in items])
        finally:
            with self._lock:
                self._queued.difference_update(key for key, _d, _cb in batch)
