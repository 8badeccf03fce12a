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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from kvpanel.cache.keys import ChunkKey, Fingerprint, chunk_key
from kvpanel.cache.load_planner import RequestPlan
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


@dataclass(slots=True)
class _Request:
    seen: set[ChunkKey] = field(default_factory=set)  # chunks already counted
    blocks: set[bytes] = field(default_factory=set)  # prompt positions hit or stored
    positions: dict[bytes, int] = field(default_factory=dict)  # block hash -> index, as asked
    held: set[ChunkKey] = field(default_factory=set)  # chunks the tiers had for it
    plan: RequestPlan = field(default_factory=RequestPlan)  # load or recompute, per tier
    went_to_engine: bool = False


def _position(key: OffloadKey) -> bytes:
    # The block hash without the KV group index: one per chunk of prompt, whatever the groups.
    return bytes(key[:-4])


class KvpanelManager(OffloadingManager):
    def __init__(self, store: TieredStore, fingerprint: Fingerprint):
        self.store = store
        self.fingerprint = fingerprint
        self._planner = store.planner
        self._requests: OrderedDict[str, _Request] = OrderedDict()
        self._key_cache: dict[OffloadKey, ChunkKey] = {}

    def _request(self, req_id: str) -> _Request:
        info = self._requests.get(req_id)
        if info is None:
            info = self._requests[req_id] = _Request()
            trace.emit("ask", req=req_id)
            if len(self._requests) > _RECENT_REQUESTS:  # finished without telling us
                self._requests.popitem(last=False)
        return info

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
        info = self._request(req_context.req_id)
        # vLLM asks a request's chunks in prompt order (the first KV group's scan comes first),
        # so the order of first asking is the prompt position, shared by every group.
        position = info.positions.setdefault(_position(key), len(info.positions))
        state = self.store.lookup(ck, count=ck not in info.seen, plan=info.plan, position=position)
        if state is not LookupState.PENDING:  # a promoted chunk counts once more, as a CPU hit
            info.seen.add(ck)
        if state is LookupState.MISS:
            if not info.went_to_engine:
                info.went_to_engine = True
                self._planner.note_recompute(len(info.blocks) * self.fingerprint.chunk_tokens)
        else:
            info.blocks.add(_position(key))
            info.held.add(ck)
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
        positions = {_position(k) for k in keys}
        self._planner.note_computed(len(positions) * self.fingerprint.chunk_tokens)
        info = self._requests.get(req_context.req_id)
        if info is not None:
            info.blocks |= positions

    def on_request_finished(self, req_context: ReqContext) -> None:
        info = self._requests.pop(req_context.req_id, None)
        if info is not None and info.blocks:
            # What a load of this prompt reads: known only from a request that was served from
            # the tiers (a recompute stores every KV group's chunks, a load reads fewer).
            tokens = len(info.blocks) * self.fingerprint.chunk_tokens
            self._planner.note_request_tokens(tokens, len(info.held) or None)

    def on_new_request(self, req_context: ReqContext) -> RequestOffloadingContext:
        return RequestOffloadingContext()

    def has_pending_work(self) -> bool:
        # Keep the engine stepping while disk -> CPU promotions run, so lookups get retried.
        return self.store.has_pending()

    def reset_cache(self) -> None:
        self.store.clear("cpu")
