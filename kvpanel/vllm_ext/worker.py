"""Worker half: moves chunks between vLLM's paged KV and kvpanel's CPU-tier slots.

vLLM describes a transfer as GPU block ids per KV group (``GPULoadStoreSpec``) plus one slot id
per offload chunk (``SlotSpec``). A chunk holds ``blocks_per_chunk`` consecutive blocks of every
layer of its group, layer-major (the ``kvpanel.kernels`` slot layout). The first chunk of a group
may be entered part-way (``block_indices``) and the last may end early: those sub-blocks are -1.

On CUDA the copies complete asynchronously (an event per job) on two high-priority streams of
their own, one for loads and one for stores, so a load never queues behind a large store and
both PCIe directions run at once. A chunk becomes
visible to lookups only after its store completed, so the two streams need no ordering between
them. On vLLM's CPU platform the copies are plain torch copies, done when submit returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

import torch

from kvpanel import kernels
from kvpanel.vllm_ext import trace
from kvpanel.vllm_ext.compat import (
    BlockIDsLoadStoreSpec,
    CanonicalKVCaches,
    GPULoadStoreSpec,
    LoadStoreSpec,
    OffloadingWorker,
    TransferResult,
)
from kvpanel.vllm_ext.slots import SlotSource


class _Job(NamedTuple):
    job_id: int
    nbytes: int
    is_load: bool
    cpu_seconds: float
    start_event: object | None
    end_event: object | None
    # The slot views the copies use, held until they are done: host memory never goes away
    # under an in-flight DMA, whatever the pool does meanwhile.
    views: object = None


def group_layers(kv_caches: CanonicalKVCaches) -> list[list[torch.Tensor]]:
    """Per KV group, the per-layer ``(num_blocks, page_bytes)`` int8 views the kernels copy."""
    rows = [t.tensor.view(torch.int8).view(-1, t.page_size_bytes) for t in kv_caches.tensors]
    return [
        [rows[ref.tensor_idx][:, : ref.page_size_bytes] for ref in refs]
        for refs in kv_caches.group_data_refs
    ]


def allocated_kv_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the memory behind the engine's KV cache tensors, each allocation counted once.

    Hybrid models (gpt-oss: sliding-window and full-attention layer groups) have several
    layers' views over one allocation (vLLM's groups alias the same blocks), so summing the
    layers (or layers x blocks x page) counts the same bytes twice or more."""
    storages: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def chunk_block_table(
    gpu_blocks: list[int], first_block_index: int, blocks_per_chunk: int
) -> torch.Tensor:
    """(num_chunks, blocks_per_chunk) GPU block ids, -1 where a chunk is not covered."""
    skip = first_block_index % blocks_per_chunk
    n_chunks = -(-(skip + len(gpu_blocks)) // blocks_per_chunk)
    table = torch.full((n_chunks * blocks_per_chunk,), -1, dtype=torch.int64)
    table[skip : skip + len(gpu_blocks)] = torch.as_tensor(gpu_blocks, dtype=torch.int64)
    return table.view(n_chunks, blocks_per_chunk)


class KvpanelWorker(OffloadingWorker):
    def __init__(self, slots: SlotSource, kv_caches: CanonicalKVCaches, blocks_per_chunk: int):
        self.slots = slots
        self.blocks_per_chunk = blocks_per_chunk
        self.layers = group_layers(kv_caches)
        slots.report_engine_kv_bytes(allocated_kv_bytes(t.tensor for t in kv_caches.tensors))
        need = max(kernels.chunk_nbytes(g, blocks_per_chunk) for g in self.layers if g)
        if need > slots.shard_bytes:
            raise ValueError(
                f"kvpanel slot of {slots.shard_bytes} bytes cannot hold a chunk of {need} bytes"
            )
        self.on_cuda = any(t.is_cuda for g in self.layers for t in g)
        # High priority: the staged path's page shuffles are microseconds long and should
        # not queue behind the model's kernels (the PCIe leg needs no SM at all).
        self.load_stream = torch.cuda.Stream(priority=-1) if self.on_cuda else None
        self.store_stream = torch.cuda.Stream(priority=-1) if self.on_cuda else None
        if self.on_cuda:  # JIT-compile now, not during the first request's load
            for g in self.layers:
                if g:
                    kernels.warm_up(g, blocks_per_chunk, stream=self.load_stream)
                    kernels.warm_up(g, blocks_per_chunk, stream=self.store_stream)
        self._jobs: list[_Job] = []
        self._done: list[TransferResult] = []

    def _plan(self, gpu: GPULoadStoreSpec, slots: LoadStoreSpec) -> list:
        assert isinstance(slots, BlockIDsLoadStoreSpec)
        slot_ids = [int(s) for s in slots.block_ids]
        ids = gpu.block_ids.tolist()
        plan = []
        gpu_pos = slot_pos = 0
        for g, (size, first) in enumerate(zip(gpu.group_sizes, gpu.block_indices, strict=True)):
            if size == 0:
                continue
            table = chunk_block_table(ids[gpu_pos : gpu_pos + size], first, self.blocks_per_chunk)
            n = table.shape[0]
            views = [self.slots.shard(s) for s in slot_ids[slot_pos : slot_pos + n]]
            plan.append((self.layers[g], table, views))
            gpu_pos += size
            slot_pos += n
        assert gpu_pos == len(ids) and slot_pos == len(slot_ids), "spec/slot mismatch"
        return plan

    def _run(self, job_id: int, plan: list, to_slots: bool) -> bool:
        nbytes = 0
        start_event = end_event = None
        stream = self.store_stream if to_slots else self.load_stream
        if stream is not None:
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            # Stores read KV the model just wrote; loads write blocks the scheduler may have
            # zeroed on the compute stream: order both after it.
            stream.wait_stream(torch.cuda.current_stream())
            start_event.record(stream)
        started = time.perf_counter()
        for layers, table, views in plan:
            if to_slots:
                kernels.gather_chunks(layers, table, views, stream=stream)
            else:
                kernels.scatter_chunks(views, table, layers, stream=stream)
            valid = int((table >= 0).sum())
            nbytes += valid * sum(t.shape[1] for t in layers)
        if end_event is not None:
            end_event.record(stream)
        cpu_seconds = time.perf_counter() - started
        trace.emit("submit", job=job_id, load=not to_slots, bytes=nbytes, host_s=cpu_seconds)
        views = [v for _layers, _table, v in plan] if end_event is not None else None
        self._jobs.append(
            _Job(job_id, nbytes, not to_slots, cpu_seconds, start_event, end_event, views)
        )
        return True

    def submit_store(
        self, job_id: int, src_spec: GPULoadStoreSpec, dst_spec: LoadStoreSpec
    ) -> bool:
        return self._run(job_id, self._plan(src_spec, dst_spec), to_slots=True)

    def submit_load(
        self,
        job_id: int,
        src_spec: LoadStoreSpec,
        dst_spec: GPULoadStoreSpec,
        expedited: bool = False,
    ) -> bool:
        # vLLM 0.33 passes expedited=True for a load it waits on within the step (wait()):
        # loads already have a stream of their own that no store queues on.
        return self._run(job_id, self._plan(dst_spec, src_spec), to_slots=False)

    def get_finished(self) -> list[TransferResult]:
        trace.emit("step")
        results = []
        pending = []
        for job in self._jobs:  # two streams: jobs may finish out of submission order
            if job.end_event is not None:
                if not job.end_event.query():  # type: ignore[attr-defined]
                    pending.append(job)
                    continue
                seconds = job.start_event.elapsed_time(job.end_event) * 1e-3  # type: ignore[attr-defined]
            else:
                seconds = job.cpu_seconds
            self.slots.record_transfer(job.nbytes, seconds, job.is_load, job.cpu_seconds)
            trace.emit("done", job=job.job_id, gpu_s=seconds)
            results.append(TransferResult(job.job_id, True, job.nbytes, seconds))
        self._jobs = pending
        # Every step, a no-op with nothing new: the KV bytes reach the status before any copy.
        self.slots.publish()
        return results

    def wait(self, job_ids: set[int]) -> None:
        for job in list(self._jobs):
            if job.job_id in job_ids and job.end_event is not None:
                job.end_event.synchronize()  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        for stream in (self.load_stream, self.store_stream):
            if stream is not None:
                stream.synchronize()
        self._jobs.clear()
        trace.flush()
