"""Remote tier: validated KV chunks in a Redis (or Redis Cluster) shared by many engines.

Primitives:
- ``RemoteTier``: ``may_have`` (the scheduler-side check: no I/O), ``get`` (one blocking,
  validated GET, run on a promotion thread), ``put_async`` (write-behind: bounded queue, one
  writer thread batching SETs into pipelines, drops and counts when full), ``put`` (sync),
  ``note_miss``, ``clear``, ``flush``, ``stats``, ``close``.
- Health: any connection-level error marks the tier unhealthy (``note="unreachable: ..."``);
  lookups are then immediate misses and writes are refused, and a probe thread PINGs every
  ``probe_interval_s`` until Redis answers again (it also refreshes RTT and memory stats).
- Negative cache: a key whose GET found nothing (or garbage) is a miss without I/O for
  ``miss_ttl_s``, so the PENDING -> MISS dance costs one GET per key, not one per poll.
- Reads check the value's length in Redis before it is sent (``fmt.get_checked``): junk of
  any size under our names costs a few bytes of traffic, never its size in memory.
- ``secret``: a ``CacheSecret`` keys the values' checks and gives this tier its own key names
  (``kvpanel.cache.secret`` says why); without one, values are checked but not authenticated.

Nothing raises into the caller after construction (bad URLs raise ``ValueError`` there):
every Redis error becomes a miss, a refused write, or an unhealthy tier.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from kvpanel.cache import remote_format as fmt
from kvpanel.cache.buffers import Payload, as_byte_view, payload_nbytes
from kvpanel.cache.disk_format import CorruptChunk
from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.secret import CacheSecret, namespace_digest
from kvpanel.cache.stats import TierCounters, TierStats

log = logging.getLogger("kvpanel")

OnDone = Callable[[bool], None]
_Job = tuple[ChunkKey, Payload, OnDone | None]
_ERRORS = fmt.ERRORS


class RemoteTier:
    def __init__(
        self,
        url: str,
        fp: Fingerprint,
        *,
        max_queue: int = 64,
        batch_bytes: int = 64 << 20,
        connect_timeout_s: float = 0.5,
        timeout_s: float = 2.0,
        probe_interval_s: float = 1.0,
        stats_interval_s: float = 5.0,
        miss_ttl_s: float = 5.0,
        max_remembered_misses: int = 65536,
        secret: CacheSecret | None = None,
    ) -> None:
        self.url = fmt.parse_url(url)
        self._secret = secret
        self._fp_digest = namespace_digest(fp.digest(), secret)
        self._fp_hex = self._fp_digest.hex()
        self._chunk_bytes = fp.chunk_bytes
        self._scripted = True  # reads check lengths in Redis (EVAL) until it says NOPERM
        self._batch_bytes = max(1, batch_bytes)
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._probe_interval_s = probe_interval_s
        self._stats_interval_s = stats_interval_s
        self._miss_ttl_s = miss_ttl_s
        self._max_misses = max_remembered_misses
        self._lock = threading.Lock()
        self._client: redis.Redis | RedisCluster | None = None
        self._healthy = False
        self._down_reason = "not connected yet"
        self._last_probe = 0.0
        self._rtt_s: float | None = None
        self._server = (0, 0, 0)  # maxmemory, used_memory, keys (whole db, all users)
        self._gets = 0
        self._get_seconds = 0.0
        self._misses: OrderedDict[ChunkKey, float] = OrderedDict()  # key -> forget-after time
        # Keys this process wrote recently (key -> until when): a late "absent" is stale.
        self._written: OrderedDict[ChunkKey, float] = OrderedDict()
        self._queued: set[ChunkKey] = set()  # queued or being sent; flush waits for none
        self._counters = TierCounters("remote")
        self._closed = False
        self._stop = threading.Event()
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max(1, max_queue))
        # Connect now so the first lookups can already hit; a failure just starts us unhealthy.
        self._probe()
        self._writer = threading.Thread(
            target=self._writer_loop, name="kvpanel-remote-writer", daemon=True
        )
        self._prober = threading.Thread(
            target=self._probe_loop, name="kvpanel-remote-probe", daemon=True
        )
        self._writer.start()
        self._prober.start()

    # ----- health -----------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        with self._lock:
            return self._healthy

    def _connect(self) -> redis.Redis | RedisCluster:
        with self._lock:
            if self._client is not None:
                return self._client
        client = fmt.connect(self.url, self._connect_timeout_s, self._timeout_s)
        with self._lock:
            if self._client is None:
                self._client = client
                return client
            existing = self._client
        client.close()
        return existing

    def _mark_down(self, e: BaseException) -> None:
        with self._lock:
            was_up = self._healthy
            self._healthy = False
            self._down_reason = fmt.describe(e)
            client, self._client = self._client, None
        if was_up:
            log.warning("kvpanel remote tier %s unreachable: %s", self.url.display, fmt.describe(e))
        if client is not None:
            # Rebuilt by the probe: a cluster client must rediscover its slots anyway.
            with contextlib.suppress(Exception):
                client.close()

    def _probe(self) -> bool:
        try:
            client = self._connect()
            t0 = time.perf_counter()
            client.ping()
            rtt = time.perf_counter() - t0
            server = fmt.server_info(client)
        except Exception as e:  # anything failing here means "not usable now"
            self._mark_down(e)
            return False
        finally:
            with self._lock:
                self._last_probe = time.monotonic()
        with self._lock:
            was_up = self._healthy
            self._healthy, self._rtt_s, self._server = True, rtt, server
        if not was_up:
            log.info("kvpanel remote tier %s reachable", self.url.display)
        return True

    def _probe_loop(self) -> None:
        while not self._stop.wait(self._probe_interval_s):
            with self._lock:
                due = not self._healthy or (
                    time.monotonic() - self._last_probe >= self._stats_interval_s
                )
            if due:
                self._probe()

    # ----- reads ------------------------------------------------------------------------------

    def may_have(self, key: ChunkKey, count: bool = True) -> bool:
        """Worth a GET? No I/O (runs on the scheduler); a False answer counts as a miss."""
        now = time.monotonic()
        with self._lock:
            ok = self._healthy and not self._closed
            if ok:
                until = self._misses.get(key)
                if until is not None:
                    if until > now:
                        ok = False
                    else:
                        del self._misses[key]
        if not ok and count:
            self._counters.add(misses=1)
        return ok

    def note_miss(self, key: ChunkKey) -> None:
        """Answer lookups of ``key`` with a miss, without I/O, for ``miss_ttl_s``."""
        now = time.monotonic()
        with self._lock:
            # A GET that found nothing may finish after this process queued or sent the key
            # (it computed the chunk meanwhile): remembering that miss would hide the value
            # for miss_ttl_s. Seen as a missing remote hit in the Redis fault test.
            if key in self._queued or self._written.get(key, 0.0) > now:
                return
            self._misses[key] = now + self._miss_ttl_s
            self._misses.move_to_end(key)
            while len(self._misses) > self._max_misses:
                self._misses.popitem(last=False)

    def get(self, key: ChunkKey, expect_bytes: int | None = None) -> memoryview | None:
        """The validated payload, or None (absent, doubtful, or Redis unusable). Blocking.

        ``expect_bytes``: the payload length the caller can use (default: the fingerprint's
        chunk size); a value of any other length is doubtful, and is deleted without being read.
        """
        with self._lock:
            if not self._healthy or self._closed:
                return None
        name = fmt.redis_key(self._fp_hex, key)
        payload_bytes = self._chunk_bytes if expect_bytes is None else expect_bytes
        value_bytes = fmt.HEADER_BYTES + payload_bytes
        client: redis.Redis | RedisCluster | None = None
        try:
            client = self._connect()
            t0 = time.perf_counter()
            try:
                size, raw = fmt.get_checked(client, name, value_bytes, scripted=self._scripted)
            except ResponseError as e:
                if not (self._scripted and fmt.is_permission_error(e)):
                    raise
                log.warning("kvpanel remote tier: no EVAL permission, reading without the script")
                self._scripted = False
                size, raw = fmt.get_checked(client, name, value_bytes, scripted=False)
            dt = time.perf_counter() - t0
        except _ERRORS as e:
            self._on_error(e)
            if client is not None and not fmt.is_down(e):
                # Redis answered (a wrong type under our name, no permission): a miss for
                # miss_ttl_s, not a PENDING that is fetched again on every poll.
                self.note_miss(key)
                with contextlib.suppress(*_ERRORS):
                    client.unlink(name)
            return None
        with self._lock:
            self._gets += 1
            self._get_seconds += dt
        if size < 0:
            self.note_miss(key)
            return None
        try:
            if raw is None:  # deleted already, unread
                raise CorruptChunk(f"{size} bytes, expected {value_bytes}")
            # The header must then claim exactly the payload length the caller expects.
            payload = fmt.decode(raw, self._fp_digest, key, self._secret)
        except CorruptChunk as e:
            # Never serve doubtful bytes, and make sure nobody else is served them either.
            log.warning("kvpanel remote tier: dropping bad value %s: %s", name.decode(), e)
            self._counters.add(errors=1)
            self.note_miss(key)
            if raw is not None or not self._scripted:  # the script deleted a wrong length
                with contextlib.suppress(*_ERRORS):
                    client.unlink(name)
            return None
        self._counters.add(hits=1, bytes_out=payload.nbytes)
        return payload

    def _on_error(self, e: BaseException) -> None:
        self._counters.add(errors=1)
        if fmt.is_down(e):
            self._mark_down(e)

    # ----- writes -----------------------------------------------------------------------------

    def put_async(self, key: ChunkKey, data: Payload, on_done: OnDone | None = None) -> bool:
        """Queue a SET; False if refused (unhealthy, closed, queue full: counted as dropped).

        ``data`` must stay unchanged until ``on_done(ok)`` runs (on the writer thread, right
        after the value was encoded, or inline for a duplicate). Not called on refusal.
        """
        with self._lock:
            if self._closed or not self._healthy:
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

    def put(self, key: ChunkKey, data: Payload) -> bool:
        """SET synchronously; False on refusal or failure (never raises on Redis errors)."""
        with self._lock:
            if self._closed or not self._healthy:
                return False
            self._misses.pop(key, None)
        payload = as_byte_view(data)
        value = fmt.encode(self._fp_digest, key, payload, self._secret)
        return self._send([(key, value, payload.nbytes)])

    def _send(self, items: list[tuple[ChunkKey, bytes, int]]) -> bool:
        if not items:
            return True
        try:
            client = self._connect()
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

    def _write_batch(self, batch: list[_Job]) -> None:
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
            with self._lock:
                healthy = self._healthy and bool(items)
            if healthy and self._send(items):
                with self._lock:  # a GET that raced the SET may have noted a miss
                    for key, _v, _n in items:
                        self._misses.pop(key, None)
        finally:
            with self._lock:
                self._queued.difference_update(key for key, _d, _cb in batch)

    # ----- management -------------------------------------------------------------------------

    def clear(self) -> list[ChunkKey]:
        """Delete this fingerprint's chunks from Redis (other models' keys are left alone);
        not counted as evictions (see CpuTier.clear)."""
        try:
            gone = [ChunkKey(k) for k in fmt.delete_prefix(self._connect(), self._fp_hex)]
        except _ERRORS as e:
            self._on_error(e)
            return []
        return gone

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write was sent (or given up); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._queued:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    def stats(self) -> TierStats:
        with self._lock:
            healthy, reason, rtt = self._healthy, self._down_reason, self._rtt_s
            capacity, used, chunks = self._server
            mean_get = self._get_seconds / self._gets if self._gets else None
        if not healthy:
            note = f"unreachable: {reason}"
        else:
            parts = [] if rtt is None else [f"rtt {rtt * 1e3:.1f} ms"]
            if mean_get is not None:
                parts.append(f"get {mean_get * 1e3:.1f} ms")
            note = ", ".join(parts)
        return self._counters.snapshot(capacity, used, chunks, healthy=healthy, note=note)

    def count_dropped(self, n: int) -> None:
        self._counters.add(dropped=n)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._queue.put(None)  # the writer sends everything queued before the sentinel
        self._writer.join()
        self._prober.join()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
