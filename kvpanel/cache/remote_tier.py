"""Remote tier: validated KV chunks in a Redis (or Redis Cluster) shared by many engines.

Primitives:
- ``RemoteTier``: ``may_have`` (the scheduler-side check: no I/O), ``get_many`` / ``get``
  (validated GETs of several keys in one pipeline, run on fetch threads), ``put_many`` / ``put``
  (synchronous pipelined SETs, thread-safe, the payload sent from the caller's memory; the
  store's ``write_behind`` calls them as ``write_many``), ``note_miss``, ``clear``, ``stats``,
  ``close``.
- Health (``remote_client.RemoteLink``): any connection-level error marks the tier unhealthy
  (``note="unreachable: ..."``); lookups are then immediate misses and writes are refused, and a
  probe thread PINGs every ``probe_interval_s`` until Redis answers again.
- Lookup budget: while Redis's measured round trip (``RemoteLink.latency_s``) is above
  ``lookup_budget_s``, ``may_have`` says yes only for keys the ``PresenceIndex`` knows are there
  (written or read by this process, or listed by a SCAN that runs every ``index_interval_s``
  while Redis is slow). A GET for an absent key would make the engine wait a slow round trip for
  nothing; a cold prompt is then a miss at once, and chunks Redis holds are still fetched.
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
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from redis.exceptions import ResponseError
from redis.utils import HIREDIS_AVAILABLE

from kvpanel.cache import remote_format as fmt
from kvpanel.cache.buffers import Payload, as_byte_view
from kvpanel.cache.disk_format import ChunkHeader, CorruptChunk
from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.remote_client import RemoteLink, get_many_checked, set_many
from kvpanel.cache.remote_index import PresenceIndex, scan_keys
from kvpanel.cache.secret import CacheSecret, namespace_digest, payload_check
from kvpanel.cache.stats import TierCounters, TierStats

log = logging.getLogger("kvpanel")

__all__ = ["RemoteTier"]
_ERRORS = fmt.ERRORS


class RemoteTier:
    name = "remote"
    batch_bytes = 0  # one value per pipeline: 6 MiB values moved faster one per call

    def __init__(
        self,
        url: str,
        fp: Fingerprint,
        *,
        connect_timeout_s: float = 0.5,
        timeout_s: float = 2.0,
        probe_interval_s: float = 1.0,
        stats_interval_s: float = 5.0,
        miss_ttl_s: float = 5.0,
        max_remembered_misses: int = 65536,
        lookup_budget_s: float = 0.025,
        index_interval_s: float = 2.0,
        max_indexed_keys: int = 1 << 16,
        secret: CacheSecret | None = None,
    ) -> None:
        self.url = fmt.parse_url(url)
        self._secret = secret
        self._fp_digest = namespace_digest(fp.digest(), secret)
        self._fp_hex = self._fp_digest.hex()
        self._chunk_bytes = fp.chunk_bytes
        self._scripted = True  # reads check lengths in Redis (EVAL) until it says NOPERM
        self._miss_ttl_s = miss_ttl_s
        self._max_misses = max_remembered_misses
        self._budget_s = lookup_budget_s
        self._index_interval_s = index_interval_s
        self._lock = threading.Lock()
        self._link = RemoteLink(
            self.url,
            connect_timeout_s=connect_timeout_s,
            timeout_s=timeout_s,
            probe_interval_s=probe_interval_s,
            stats_interval_s=stats_interval_s,
        )
        self._present = PresenceIndex(max_indexed_keys)
        self._gets = 0
        self._get_seconds = 0.0
        self._misses: OrderedDict[ChunkKey, float] = OrderedDict()  # key -> forget-after time
        # Keys this process wrote recently (key -> until when): a late "absent" is stale.
        self._written: OrderedDict[ChunkKey, float] = OrderedDict()
        self._counters = TierCounters("remote")
        self._closed = False
        self._stop = threading.Event()
        if not HIREDIS_AVAILABLE:
            log.warning("kvpanel remote tier: hiredis is not installed; reads are ~5x slower")
        # Connect now so the first lookups can already hit; a failure just starts us unhealthy.
        self._link.probe()
        self._link.start()
        self._indexer = threading.Thread(
            target=self._index_loop, name="kvpanel-remote-index", daemon=True
        )
        self._indexer.start()

    # ----- health and latency -----------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._link.healthy

    def slow(self) -> bool:
        """Redis's round trip is above the lookup budget (or not measured yet)."""
        latency = self._link.latency_s
        return latency is None or latency > self._budget_s

    def _index_loop(self) -> None:
        # SCAN walks the whole database (every user's keys): only worth it while asking Redis
        # key by key is too slow. While it is fast, a GET answers exactly and cheaply.
        while not self._stop.wait(self._index_interval_s):
            if not (self._link.healthy and self.slow()):
                continue
            try:
                self._present.add(scan_keys(self._link.client(), self._fp_hex))
            except _ERRORS as e:
                self._on_error(e)

    def _on_error(self, e: BaseException) -> None:
        self._counters.add(errors=1)
        if fmt.is_down(e):
            self._link.mark_down(e)

    # ----- reads ------------------------------------------------------------------------------

    def may_have(self, key: ChunkKey, count: bool = True) -> bool:
        """Worth a GET? No I/O (runs on the scheduler); a False answer counts as a miss."""
        now = time.monotonic()
        ok = self._link.healthy
        with self._lock:
            ok = ok and not self._closed
            if ok:
                until = self._misses.get(key)
                if until is not None:
                    if until > now:
                        ok = False
                    else:
                        del self._misses[key]
        if ok and self.slow() and key not in self._present:
            ok = False  # a slow round trip for a key Redis probably lacks: recompute now
        if not ok and count:
            self._counters.add(misses=1)
        return ok

    def note_miss(self, key: ChunkKey) -> None:
        """Answer lookups of ``key`` with a miss, without I/O, for ``miss_ttl_s``."""
        now = time.monotonic()
        with self._lock:
            # A GET that found nothing may finish after this process sent the key (it computed
            # the chunk meanwhile): remembering that miss would hide the value for miss_ttl_s.
            if self._written.get(key, 0.0) > now:
                return
            self._misses[key] = now + self._miss_ttl_s
            self._misses.move_to_end(key)
            while len(self._misses) > self._max_misses:
                self._misses.popitem(last=False)
        self._present.discard(key)

    def get(self, key: ChunkKey, expect_bytes: int | None = None) -> memoryview | None:
        """The validated payload, or None (absent, doubtful, or Redis unusable). Blocking."""
        return self.get_many([key], expect_bytes)[0]

    def get_many(
        self, keys: Sequence[ChunkKey], expect_bytes: int | None = None
    ) -> list[memoryview | None]:
        """Per key, the validated payload or None; one pipeline for all. Blocking.

        ``expect_bytes``: the payload length the caller can use (default: the fingerprint's
        chunk size); a value of any other length is doubtful, and is deleted without being read.
        """
        out: list[memoryview | None] = [None] * len(keys)
        with self._lock:
            if self._closed:
                return out
        if not keys or not self._link.healthy:
            return out
        names = [fmt.redis_key(self._fp_hex, k) for k in keys]
        payload_bytes = self._chunk_bytes if expect_bytes is None else expect_bytes
        value_bytes = fmt.HEADER_BYTES + payload_bytes
        try:
            client = self._link.client()
            t0 = time.perf_counter()
            replies = get_many_checked(client, names, value_bytes, scripted=self._scripted)
            if self._scripted and any(
                isinstance(r, ResponseError) and fmt.is_permission_error(r) for r in replies
            ):
                log.warning("kvpanel remote tier: no EVAL permission, reading without the script")
                self._scripted = False
                replies = get_many_checked(client, names, value_bytes, scripted=False)
            dt = time.perf_counter() - t0
        except _ERRORS as e:
            self._on_error(e)
            return out
        if not any(isinstance(r, tuple) and r[1] is not None for r in replies):
            self._link.note_round_trip(dt)  # no value came back: a pure round trip
        with self._lock:
            self._gets += len(keys)
            self._get_seconds += dt
        for i, (key, name, reply) in enumerate(zip(keys, names, replies, strict=True)):
            out[i] = self._validated(key, name, reply, value_bytes)
        return out

    def _validated(
        self,
        key: ChunkKey,
        name: bytes,
        reply: tuple[int, bytes | None] | Exception,
        value_bytes: int,
    ) -> memoryview | None:
        if isinstance(reply, Exception):
            # Redis answered (a wrong type under our name): a miss for miss_ttl_s, not a
            # PENDING that is fetched again on every poll, and the entry goes.
            self._counters.add(errors=1)
            self.note_miss(key)
            self._unlink(name)
            return None
        size, raw = reply
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
                self._unlink(name)
            return None
        self._present.add([key])
        self._counters.add(hits=1, bytes_out=payload.nbytes)
        return payload

    def _unlink(self, name: bytes) -> None:
        with contextlib.suppress(*_ERRORS):
            self._link.client().unlink(name)

    # ----- writes -----------------------------------------------------------------------------

    def put(self, key: ChunkKey, data: Payload) -> bool:
        """SET synchronously; False on refusal or failure (never raises on Redis errors)."""
        return self.put_many([(key, data)])[0]

    def put_many(self, items: Sequence[tuple[ChunkKey, Payload]]) -> list[bool]:
        """SET every (key, payload) in one pipeline, synchronously; per item whether it was
        stored. Thread-safe; never raises. The payloads are sent from the caller's memory (no
        copy), so they must stay unchanged until this returns."""
        out = [False] * len(items)
        with self._lock:
            if self._closed or not items:
                return out
        if not self._link.healthy:
            return out
        wire: list[tuple[bytes, bytes, memoryview]] = []
        sent: list[int] = []
        for i, (key, data) in enumerate(items):
            try:
                payload = as_byte_view(data)
            except (ValueError, TypeError):
                self._counters.add(errors=1)  # not CPU bytes: nothing to send
                continue
            check = payload_check(payload, self._fp_digest, key, self._secret)
            header = ChunkHeader(self._fp_digest, key, payload.nbytes, check).pack()
            wire.append((fmt.redis_key(self._fp_hex, key), header, payload))
            sent.append(i)
        if not wire:
            return out
        self._note_writing([items[i][0] for i in sent])
        try:
            stored = set_many(self._link.client(), wire, self.url.ttl_s)
        except _ERRORS as e:
            self._on_error(e)
            return out
        except Exception:  # the write-behind threads call this: a bug must not kill them
            log.exception("kvpanel remote tier: put_many failed")
            self._counters.add(errors=len(wire))
            return out
        done = [items[i][0] for i, ok in zip(sent, stored, strict=True) if ok]
        for i, ok in zip(sent, stored, strict=True):
            out[i] = ok
        if len(done) < len(sent):
            self._counters.add(errors=len(sent) - len(done))  # refused by Redis (e.g. OOM)
        self._note_stored(done)
        self._counters.add(
            bytes_in=sum(w[2].nbytes for w, ok in zip(wire, stored, strict=True) if ok)
        )
        return out

    def _note_writing(self, keys: Sequence[ChunkKey]) -> None:
        until = time.monotonic() + self._miss_ttl_s
        with self._lock:
            for key in keys:
                self._misses.pop(key, None)  # we are about to have it
                self._written[key] = until
                self._written.move_to_end(key)
            while len(self._written) > self._max_misses:
                self._written.popitem(last=False)

    def _note_stored(self, keys: Sequence[ChunkKey]) -> None:
        with self._lock:  # a GET that raced the SET may have noted a miss
            for key in keys:
                self._misses.pop(key, None)
        self._present.add(keys)

    # ----- management -------------------------------------------------------------------------

    def clear(self) -> list[ChunkKey]:
        """Delete this fingerprint's chunks from Redis (other models' keys are left alone);
        not counted as evictions (see CpuTier.clear)."""
        try:
            gone = [ChunkKey(k) for k in fmt.delete_prefix(self._link.client(), self._fp_hex)]
        except _ERRORS as e:
            self._on_error(e)
            return []
        return gone

    def stats(self) -> TierStats:
        healthy, reason, rtt, (capacity, used, chunks) = self._link.snapshot()
        with self._lock:
            mean_get = self._get_seconds / self._gets if self._gets else None
        if not healthy:
            note = f"unreachable: {reason}"
        else:
            parts = [] if rtt is None else [f"rtt {rtt * 1e3:.1f} ms"]
            if mean_get is not None:
                parts.append(f"get {mean_get * 1e3:.1f} ms")
            if self.slow():
                parts.append(f"over lookup budget: {len(self._present)} known keys fetched")
            note = ", ".join(parts)
        return self._counters.snapshot(capacity, used, chunks, healthy=healthy, note=note)

    # ----- write-behind target (write_behind.WriteTarget) --------------------------------------

    def accepts(self) -> bool:
        with self._lock:
            if self._closed:
                return False
        return self._link.healthy

    def stores(self, key: ChunkKey) -> bool:
        return False  # asking Redis would cost a round trip per chunk; a SET is idempotent

    def write_many(self, items: Sequence[tuple[ChunkKey, Payload]]) -> list[bool]:
        return self.put_many(items)

    def count_dropped(self, n: int) -> None:
        self._counters.add(dropped=n)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._indexer.join()
        self._link.close()
