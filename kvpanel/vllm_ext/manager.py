"""Scheduler half: answers vLLM's OffloadingManager calls from kvpanel's TieredStore.

vLLM hands block-hash keys (prefix-chained sha256 over token ids, one per offload chunk and KV
group); kvpanel re-keys them under the model/layout fingerprint, so no two models ever share a
key, in memory or on disk.

vLLM asks ``lookup`` again on every engine step while a request waits (for GPU room, or for a
disk/Redis promotion), so tier hits and misses are counted once per (request, chunk): the hit
rate the panel shows is over distinct chunks a request wanted, not over polls.

Load or recompute (``cache.load_planner``): each request carries its own decisions per tier,
made on its first chunk held below CPU; the manager feeds the planner what only the scheduler
sees: the prompt tokens the engine computed (stores), prompt sizes (at ``on_request_finished``)
and requests that go to the engine (their first miss).

vLLM's hooks: a request's state ends at ``on_request_finished``; ``shutdown`` writes what is
queued for disk and Redis and closes the store (vLLM calls it after the worker's last
transfer); ``take_events`` reports the CPU tier under vLLM's keys (``kv_events``);
``get_load_source`` names the tier a hit came from.
"""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace

from kvpanel.cache.keys import ChunkKey, Fingerprint, chunk_key
from kvpanel.cache.load_planner import RequestPlan
from kvpanel.cache.store import LookupState, TieredStore
from kvpanel.vllm_ext import runtime, trace
from kvpanel.vllm_ext.compat import (
    BlockIDsLoadStoreSpec,
    CacheHitSource,
    LoadStoreSpec,
    LookupResult,
    OffloadingEvent,
    OffloadingManager,
    OffloadKey,
    PrepareStoreOutput,
    ReqContext,
    RequestOffloadingContext,
    ScheduleEndContext,
)
from kvpanel.vllm_ext.kv_events import CpuTierEvents


class SlotSpec(BlockIDsLoadStoreSpec):
    """Where chunks live in kvpanel's CPU tier: ``block_ids`` are store slot ids."""


_LOOKUP = {
    LookupState.HIT: LookupResult.HIT,
    LookupState.PENDING: LookupResult.HIT_PENDING,
    LookupState.MISS: LookupResult.MISS,
}


# vLLM reports every request's end (on_request_finished); this bound only keeps a request that
# vLLM never reports from staying forever. Far above the requests one engine holds at once, so a
# live request never loses its state (its chunks would be counted again on every poll).
_MAX_OPEN_REQUESTS = 1 << 16
# vLLM block hash -> kvpanel key, remembered: the scheduler re-asks about the same blocks on
# every step while a request waits, and the keyed hash is a third of a lookup's cost (1.3 of
# ~3.5 us on the CI VM; 0.1 us from here). Cleared when full: a miss only costs the hash again.
_KEY_CACHE = 1 << 16


@dataclass(slots=True)
class _Request:
    seen: set[ChunkKey] = field(default_factory=set)  # chunks already counted
    blocks: set[bytes] = field(default_factory=set)  # prompt positions hit or stored
    positions: dict[bytes, int] = field(default_factory=dict)  # block hash -> index, as asked
    held: set[ChunkKey] = field(default_factory=set)  # chunks the tiers had for it
    plan: RequestPlan = field(default_factory=RequestPlan)  # load or recompute, per tier
    went_to_engine: bool = False
    promoted: dict[ChunkKey, CacheHitSource] = field(default_factory=dict)  # hits not from CPU


def _position(key: OffloadKey) -> bytes:
    # The block hash without the KV group index: one per chunk of prompt, whatever the groups.
    return bytes(key[:-4])


class KvpanelManager(OffloadingManager):
    def __init__(
        self,
        store: TieredStore,
        fingerprint: Fingerprint,
        *,
        engine_id: str | None = None,
        kv_events: bool = False,
    ):
        self.store = store
        self.fingerprint = fingerprint
        # What chunk keys are derived from: the fingerprint, and after a reset_cache a fresh
        # epoch (see reset_cache). Disk and Redis still check chunks against the fingerprint.
        self._key_space = fingerprint
        self.engine_id = engine_id
        self._planner = store.planner
        self._requests: OrderedDict[str, _Request] = OrderedDict()
        # Requests vLLM was given and has not asked about yet: work queued for the engine,
        # which the load planner counts (cache.load_planner).
        self._arrived: OrderedDict[str, None] = OrderedDict()
        self._key_cache: dict[OffloadKey, ChunkKey] = {}
        self._events = CpuTierEvents(store.cpu) if kv_events else None
        self._shut_down = False
        # Pins held for vLLM's jobs in flight. vLLM never completes the jobs in flight at a
        # reset_cache, so their pins are released once the workers are done with them
        # (on_reset_flushed, vLLM 0.33+); until then their slots must stay reserved.
        self._storing: set[ChunkKey] = set()
        self._loading: Counter[ChunkKey] = Counter()
        self._orphaned: list[tuple[list[ChunkKey], list[ChunkKey]]] = []

    @property
    def pinned_for_jobs(self) -> int:
        """Pins held for vLLM's transfer jobs, including those orphaned by a reset."""
        orphaned = sum(len(s) + len(r) for s, r in self._orphaned)
        return len(self._storing) + sum(self._loading.values()) + orphaned

    @property
    def open_requests(self) -> int:
        """Requests asked about and not finished yet."""
        return len(self._requests)

    def _request(self, req_id: str) -> _Request:
        info = self._requests.get(req_id)
        if info is None:
            info = self._requests[req_id] = _Request()
            trace.emit("ask", req=req_id)
            self._leave_queue(req_id)
            if len(self._requests) > _MAX_OPEN_REQUESTS:
                self._requests.popitem(last=False)
        return info

    def _key(self, key: OffloadKey) -> ChunkKey:
        ck = self._key_cache.get(key)
        if ck is None:
            if len(self._key_cache) >= _KEY_CACHE:
                self._key_cache.clear()
            ck = self._key_cache[key] = chunk_key(self._key_space, key)
        return ck

    def _keys(self, keys: Iterable[OffloadKey]) -> list[ChunkKey]:
        return [self._key(k) for k in keys]

    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        ck = self._key(key)
        info = self._request(req_context.req_id)
        # vLLM asks a request's chunks in prompt order (the first KV group's scan comes first),
        # so the order of first asking is the prompt position, shared by every group.
        position = info.positions.setdefault(_position(key), len(info.positions))
        state = self.store.lookup(
            ck, count=ck not in info.seen, plan=info.plan, position=position, hold=True
        )
        if state is not LookupState.PENDING:  # a promoted chunk counts once more, as a CPU hit
            info.seen.add(ck)
        if state is LookupState.PENDING and ck not in info.promoted:
            # Promoted from disk, else from Redis (the store asks disk first); a chunk that
            # was already in CPU when first asked is a HOST hit.
            disk = self.store.disk
            from_disk = disk is not None and disk.contains(ck)
            info.promoted[ck] = (
                CacheHitSource.DISK if from_disk else CacheHitSource.EXTERNAL_UNSPECIFIED
            )
        if state is LookupState.MISS:
            if not info.went_to_engine:
                info.went_to_engine = True
                self._planner.note_recompute(len(info.blocks) * self.fingerprint.chunk_tokens)
        else:
            info.blocks.add(_position(key))
            info.held.add(ck)
        return _LOOKUP[state]

    def get_load_source(self, key: OffloadKey, req_context: ReqContext) -> CacheHitSource:
        info = self._requests.get(req_context.req_id)
        source = info.promoted.get(self._key(key)) if info is not None else None
        return source or CacheHitSource.HOST

    def prepare_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> LoadStoreSpec:
        trace.emit("admit", req=req_context.req_id, chunks=len(keys))
        chunks = self._keys(keys)
        slots = self.store.acquire(chunks)
        self._loading.update(chunks)
        return SlotSpec(slots)

    def touch(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        self.store.touch(self._keys(keys))

    def complete_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        trace.emit("loaded", req=req_context.req_id)
        chunks = self._keys(keys)
        for ck in chunks:  # drop at zero: a Counter keeps zero counts
            left = self._loading[ck] - 1
            if left > 0:
                self._loading[ck] = left
            else:
                self._loading.pop(ck, None)
        self.store.release(chunks)

    def prepare_store(
        self, keys: Collection[OffloadKey], req_context: ReqContext
    ) -> PrepareStoreOutput | None:
        by_chunk = {self._key(k): k for k in keys}
        reservation = self.store.reserve(list(by_chunk))
        if reservation is None:
            return None
        self._storing.update(reservation.keys)
        return PrepareStoreOutput(
            keys_to_store=[by_chunk[k] for k in reservation.keys],
            store_spec=SlotSpec(list(reservation.slots)),
            # The evicted chunks' vLLM keys are known only for announced ones, and their
            # removal is announced by take_events (CpuTierEvents); vLLM reads no more here.
            evicted_keys=[],
        )

    def complete_store(
        self, keys: Collection[OffloadKey], req_context: ReqContext, success: bool = True
    ) -> None:
        chunks = self._keys(keys)
        self._storing.difference_update(chunks)
        if self._events is not None and success:
            self._events.expect(zip(chunks, keys, strict=True))
        self.store.commit(chunks, success=success)
        if self._events is not None:
            self._events.settle()
        positions = {_position(k) for k in keys}
        self._planner.note_computed(len(positions) * self.fingerprint.chunk_tokens)
        info = self._requests.get(req_context.req_id)
        if info is not None:
            info.blocks |= positions

    def _leave_queue(self, req_id: str) -> None:
        if req_id in self._arrived:
            del self._arrived[req_id]
            self._planner.note_started()

    def on_request_finished(self, req_context: ReqContext) -> None:
        self._leave_queue(req_context.req_id)  # ended (aborted) before it was asked about
        info = self._requests.pop(req_context.req_id, None)
        if info is not None and info.blocks:
            # What a load of this prompt reads: known only from a request that was served from
            # the tiers (a recompute stores every KV group's chunks, a load reads fewer).
            tokens = len(info.blocks) * self.fingerprint.chunk_tokens
            self._planner.note_request_tokens(tokens, len(info.held) or None)

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        if req_context.req_id not in self._arrived and req_context.req_id not in self._requests:
            self._arrived[req_context.req_id] = None
            self._planner.note_arrival()
            if len(self._arrived) > _MAX_OPEN_REQUESTS:  # a leak guard, as for _requests
                self._arrived.popitem(last=False)
                self._planner.note_started()
        return RequestOffloadingContext()

    def on_schedule_end(self, context: ScheduleEndContext) -> None:
        # This step's prepare_load calls are done: its hits are pinned by their loads now.
        self.store.holds.release_all()
        # A request scheduled without a lookup (vLLM asks only about prompts with a whole chunk
        # beyond its GPU prefix hit) is out of the queue too, not counted until it finishes.
        for req_id in context.new_req_ids:
            self._leave_queue(req_id)

    def has_pending_work(self) -> bool:
        # Keep the engine stepping while disk -> CPU promotions run, so lookups get retried.
        return self.store.has_pending()

    def reset_cache(self) -> None:
        """vLLM's reset_prefix_cache(reset_connector=True): what pause_generation(clear_cache=
        True) does around an in-place weight update. The fingerprint was taken from the weight
        files at start and cannot see new weights in memory, so from now on this engine keys
        its chunks in a fresh random epoch: the disk and Redis chunks made before (by this
        engine or by replicas on the old weights) are never looked up again, and the ones made
        after are never found by an engine that loads the weight files (a restart, a replica).
        The CPU tier is private to this engine and is cleared."""
        self._key_space = replace(
            self.fingerprint, extra=f"{self.fingerprint.extra}|reset:{os.urandom(16).hex()}"
        )
        self._key_cache.clear()
        self.store.clear("cpu")
        loading = list(self._loading.elements())
        if self._storing or loading:
            self._orphaned.append((list(self._storing), loading))
        self._storing = set()
        self._loading = Counter()

    def on_reset_flushed(self) -> None:
        # The workers finished every job in flight at the reset: their slots can go.
        for storing, loading in self._orphaned:
            self.store.commit(storing, success=False)
            self.store.release(loading)
        self._orphaned.clear()

    def take_events(self) -> Iterable[OffloadingEvent]:
        return self._events.take() if self._events is not None else ()

    def shutdown(self) -> None:
        """Write what is queued for disk and Redis, then close the store: the engine is
        stopping (vLLM stops the worker first, so no transfer uses the store after this)."""
        if self._shut_down:
            return
        self._shut_down = True
        if self._events is not None:
            self._events.close()
        if self.engine_id is not None:
            runtime.close_store(self.engine_id)
        else:
            self.store.close()
