"""Scheduler half: answers vLLM's OffloadingManager calls from kvpanel's TieredStore.

vLLM hands block-hash keys (prefix-chained sha256 over token ids, one per offload chunk and KV
group); kvpanel re-keys them under the model/layout fingerprint, so no two models ever share a
key, in memory or on disk.

vLLM asks ``lookup`` again on every engine step while a request waits (for GPU room, or for a
disk/Redis promotion), so tier hits and misses are counted once per (request, chunk): the hit
rate the panel shows is over distinct chunks a request wanted, not over polls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable

from kvpanel.cache.keys import ChunkKey, Fingerprint, chunk_key
from kvpanel.cache.store import LookupState, TieredStore
from kvpanel.vllm_ext import trace
from kvpanel.vllm_ext.compat import (
    BlockIDsLoadStoreSpec,
    LoadStoreSpec,
    LookupResult,
    OffloadingManager,
    OffloadKey,
    PrepareStoreOutput,
    ReqContext,
    RequestOffloadingContext,
)


class SlotSpec(BlockIDsLoadStoreSpec):
    """Where chunks live in kvpanel's CPU tier: ``block_ids`` are store slot ids."""


_LOOKUP = {
    LookupState.HIT: LookupResult.HIT,
    LookupState.PENDING: LookupResult.HIT_PENDING,
    LookupState.MISS: LookupResult.MISS,
}


# Requests whose answered chunks are remembered; older ones are long finished.
_RECENT_REQUESTS = 1024
# vLLM block hash -> kvpanel key, remembered: the scheduler re-asks about the same blocks on
# every step while a request waits, and the keyed hash is a third of a lookup's cost (1.3 of
# ~3.5 us on the CI VM; 0.1 us from here). Cleared when full: a miss only costs the hash again.
_KEY_CACHE = 1 << 16


class KvpanelManager(OffloadingManager):
    def __init__(self, store: TieredStore, fingerprint: Fingerprint):
        self.store = store
        self.fingerprint = fingerprint
        self._answered: OrderedDict[str, set[ChunkKey]] = OrderedDict()
        self._key_cache: dict[OffloadKey, ChunkKey] = {}

    def _answered_for(self, req_id: str) -> set[ChunkKey]:
        seen = self._answered.get(req_id)
        if seen is None:
            seen = self._answered[req_id] = set()
            trace.emit("ask", req=req_id)
            if len(self._answered) > _RECENT_REQUESTS:
                self._answered.popitem(last=False)
        return seen

    def _key(self, key: OffloadKey) -> ChunkKey:
        ck = self._key_cache.get(key)
        if ck is None:
            if len(self._key_cache) >= _KEY_CACHE:
                self._key_cache.clear()
            ck = self._key_cache[key] = chunk_key(self.fingerprint, key)
        return ck

    def _keys(self, keys: Iterable[OffloadKey]) -> list[ChunkKey]:
        return [self._key(k) for k in keys]

    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        ck = self._key(key)
        seen = self._answered_for(req_context.req_id)
        state = self.store.lookup(ck, count=ck not in seen)
        if state is not LookupState.PENDING:  # a promoted chunk counts once more, as a CPU hit
            seen.add(ck)
        return _LOOKUP[state]

    def prepare_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> LoadStoreSpec:
        trace.emit("admit", req=req_context.req_id, chunks=len(keys))
        return SlotSpec(self.store.acquire(self._keys(keys)))

    def touch(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        self.store.touch(self._keys(keys))

    def complete_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        trace.emit("loaded", req=req_context.req_id)
        self.store.release(self._keys(keys))

    def prepare_store(
        self, keys: Collection[OffloadKey], req_context: ReqContext
    ) -> PrepareStoreOutput | None:
        by_chunk = {self._key(k): k for k in keys}
        reservation = self.store.reserve(list(by_chunk))
        if reservation is None:
            return None
        return PrepareStoreOutput(
            keys_to_store=[by_chunk[k] for k in reservation.keys],
            store_spec=SlotSpec(list(reservation.slots)),
            # Evicted keys are kvpanel keys; vLLM only uses them for KV events, which need the
            # original block hashes we do not keep. Report none rather than wrong ones.
            evicted_keys=[],
        )

    def complete_store(
        self, keys: Collection[OffloadKey], req_context: ReqContext, success: bool = True
    ) -> None:
        self.store.commit(self._keys(keys), success=success)

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    def has_pending_work(self) -> bool:
        # Keep the engine stepping while disk -> CPU promotions run, so lookups get retried.
        return self.store.has_pending()

    def reset_cache(self) -> None:
        self.store.clear("cpu")
