"""Scheduler half: answers vLLM's OffloadingManager calls from kvpanel's TieredStore.

vLLM hands block-hash keys (prefix-chained sha256 over token ids, one per offload chunk and KV
group); kvpanel re-keys them under the model/layout fingerprint, so no two models ever share a
key, in memory or on disk.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from kvpanel.cache.keys import ChunkKey, Fingerprint, chunk_key
from kvpanel.cache.store import LookupState, TieredStore
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


class KvpanelManager(OffloadingManager):
    def __init__(self, store: TieredStore, fingerprint: Fingerprint):
        self.store = store
        self.fingerprint = fingerprint

    def _key(self, key: OffloadKey) -> ChunkKey:
        return chunk_key(self.fingerprint, key)

    def _keys(self, keys: Iterable[OffloadKey]) -> list[ChunkKey]:
        return [chunk_key(self.fingerprint, k) for k in keys]

    def lookup(self, key: OffloadKey, req_context: ReqContext) -> LookupResult:
        return _LOOKUP[self.store.lookup(self._key(key))]

    def prepare_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> LoadStoreSpec:
        return SlotSpec(self.store.acquire(self._keys(keys)))

    def touch(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        self.store.touch(self._keys(keys))

    def complete_load(self, keys: Collection[OffloadKey], req_context: ReqContext) -> None:
        self.store.release(self._keys(keys))

    def prepare_store(
        self, keys: Collection[OffloadKey], req_context: ReqContext
    ) -> PrepareStoreOutput | None:
        by_chunk = {chunk_key(self.fingerprint, k): k for k in keys}
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
