"""``KvpanelOffloadingSpec``: the class vLLM's OffloadingConnector loads by ``spec_module_path``.

Select it with ``kvpanel.vllm_ext.kv_transfer_config(settings)`` (or ``kvpanel serve``). Unlike
vLLM's CPUOffloadingSpec it also runs on vLLM's CPU platform: its worker copies with plain torch
there and with kvpanel's Triton kernels on CUDA.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from kvpanel.cache.host_pool import pool_directory
from kvpanel.cache.host_pool_map import SegmentMapper
from kvpanel.cache.keys import Fingerprint
from kvpanel.cache.store import TieredStore
from kvpanel.settings import CacheSettings, cache_secret_from_env
from kvpanel.vllm_ext import compat, model_identity, runtime, trace
from kvpanel.vllm_ext.compat import (
    CanonicalKVCaches,
    OffloadingConfig,
    OffloadingManager,
    OffloadingSpec,
    OffloadingWorker,
)

log = logging.getLogger("kvpanel")


def fingerprint_for(
    config: OffloadingConfig, settings: CacheSettings, vllm_config: Any | None
) -> tuple[Fingerprint, str | None]:
    """(fingerprint, weights identity or None when kvpanel cannot read the weights).

    The model part is ``--model-id`` when given, else the weights' content digest; the engine
    part (config after overrides, dtypes, quantization, ...) is always added, so an explicit id
    cannot name two KV layouts.
    """
    name = config.model.name
    revision = getattr(getattr(vllm_config, "model_config", None), "revision", None)
    download_dir = getattr(getattr(vllm_config, "load_config", None), "download_dir", None)
    if settings.model_id:
        weights: str | None = f"id:{settings.model_id}"
    elif config.parallel.rank > 0:
        # A worker of rank > 0 only maps the scheduler's host pool (it keys nothing): it must
        # not read the weights once more per rank to name them.
        weights = f"rank-{config.parallel.rank}-worker:{name}"
    elif settings.disk_path or settings.remote_url:
        # Under TP the scheduler and the rank-0 worker both get here at once: weights_digest
        # lets one of them read the weights while the other waits for its cached digests.
        weights = model_identity.weights_identity(name, revision, download_dir)
    else:
        # The CPU tier lives and dies with this process and its loaded weights: no need to
        # read (maybe 60 GB of) weight files to tell them apart from other processes'.
        weights = f"process:{name}"
    # Unknown content may still key the process-private CPU tier (shared tiers are refused).
    model = weights or f"unverified:{name}"
    engine = model_identity.engine_identity(vllm_config) if vllm_config is not None else None
    groups = [{"tokens": g.tokens_per_block, "layers": list(g.layer_names)} for g in config.groups]
    tokens_per_block = config.groups[0].tokens_per_block if config.groups else 0
    fp = Fingerprint(
        model=model,
        dtype=str(config.model.dtype),
        layout=compat.kv_cache_layout(config),
        block_tokens=tokens_per_block,
        chunk_tokens=tokens_per_block * config.cache.blocks_per_chunk,
        # A slot holds every rank's shard of the chunk (host_pool's layout).
        chunk_bytes=config.worker_kv_bytes_per_block
        * config.cache.blocks_per_chunk
        * config.parallel.world_size,
        extra=json.dumps(
            {
                "groups": groups,
                "tp": config.parallel.tp_size,
                "pp": config.parallel.pp_size,
                "engine": engine,
            },
            sort_keys=True,
        ),
    )
    return fp, weights


def check_parallelism(config: OffloadingConfig, vllm_config: Any | None = None) -> None:
    """Tensor parallelism is served (one host pool, every rank's shard in each slot); the
    other kinds would put unequal or overlapping shards in one slot: refuse them clearly. The
    pool is host memory: every rank must run on this node, in vLLM's multiprocess executor."""
    p = config.parallel
    pc = getattr(vllm_config, "parallel_config", None)
    if p.world_size > 1 and pc is not None:
        backend = getattr(pc, "distributed_executor_backend", "mp")
        nodes = getattr(pc, "nnodes", 1) or 1
        if backend not in ("mp", None) or nodes > 1:
            raise ValueError(
                "kvpanel's TP workers share the scheduler's host memory: it needs every rank "
                f"on one node in vLLM's multiprocess executor (got {backend!r} on {nodes} nodes)"
            )
    others = {
        "--pipeline-parallel-size": p.pp_size,
        "prefill context parallel": getattr(p, "pcp_size", 1),
        "--decode-context-parallel-size": getattr(p, "dcp_size", 1),
    }
    for what, size in others.items():
        if size != 1:
            raise ValueError(
                f"kvpanel serves tensor parallelism, not {what} = {size}; "
                "use --offload native or no offload for this engine"
            )
    if p.world_size != p.tp_size:
        raise ValueError(f"kvpanel: world_size {p.world_size} != tensor parallel {p.tp_size}")


def host_pool_for(config: OffloadingConfig) -> Path | None:
    """Where the CPU tier's shared segments live: with several ranks (each its own process)
    the scheduler's store and the workers meet there; one rank keeps them private."""
    if config.parallel.world_size == 1:
        return None
    return pool_directory(config.engine_id)


class KvpanelOffloadingSpec(OffloadingSpec):
    def __init__(self, config: OffloadingConfig):
        super().__init__(config)
        compat.check_supported()
        settings = CacheSettings.from_extra_config(self.extra_config)
        vllm_config = compat.engine_vllm_config(config)
        cache_config = getattr(vllm_config, "cache_config", None)
        hash_algo = getattr(cache_config, "prefix_caching_hash_algo", "sha256")
        # Before vLLM 0.26's engine core draws its NONE_HASH (after the worker, which builds
        # this spec first): block hashes, and so disk/Redis keys, must survive restarts.
        compat.ensure_deterministic_block_hashes(hash_algo)
        check_parallelism(config, vllm_config)
        self.fingerprint, weights = fingerprint_for(config, settings, vllm_config)
        self.settings = model_identity.shared_tiers_policy(
            settings,
            weights,
            engine_known=vllm_config is not None,
            lora=getattr(vllm_config, "lora_config", None) is not None,
            weak_hashes=compat.weak_block_hashes(hash_algo),
            name=config.model.name,
            revision=getattr(getattr(vllm_config, "model_config", None), "revision", None),
        )
        self._manager: OffloadingManager | None = None
        self._worker: OffloadingWorker | None = None

    def store(self) -> TieredStore:
        def factory() -> TieredStore:
            s = self.settings
            log.info(
                "kvpanel store: cpu %.2f GiB, disk %s (%.2f GiB), chunk %d tokens / %d bytes",
                s.cpu_bytes / 2**30,
                s.disk_path,
                s.disk_bytes / 2**30,
                self.fingerprint.chunk_tokens,
                self.fingerprint.chunk_bytes,
            )
            return TieredStore(
                self.fingerprint,
                cpu_bytes=s.cpu_bytes,
                disk_path=s.disk_path,
                disk_bytes=s.disk_bytes,
                remote_url=s.remote_url,
                pin_memory=compat.is_cuda(),
                secret=cache_secret_from_env(os.environ),  # not in s: vLLM logs its config
                host_pool=host_pool_for(self.config),
            )

        return runtime.open_store(self.config.engine_id, factory)

    def _start_engine_lifecycle(self, store: TieredStore) -> None:
        """What runs once per engine, on the scheduler side only (where the store's index
        lives): the control socket, its signal handling and the trace probe."""
        trace.install_engine_probe()  # KVPANEL_TRACE only: vLLM's side of each handoff
        if self.settings.control_socket:
            from kvpanel.vllm_ext.control import engine_socket_path, start_control_server

            dp_index = getattr(self.config.parallel, "data_parallel_index", 0) or 0
            path = engine_socket_path(self.settings.control_socket, dp_index)
            start_control_server(path, store)
            # `kvpanel serve` owns this engine's lifecycle: a Ctrl-C in its terminal reaches
            # every process of the group, and the engine must not die before the parent has
            # flushed queued disk writes through the control socket.
            with contextlib.suppress(ValueError):  # not the main thread: leave it alone
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    def get_manager(self) -> OffloadingManager:
        if self._manager is None:
            from kvpanel.vllm_ext.manager import KvpanelManager

            store = self.store()
            self._manager = KvpanelManager(
                store,
                self.fingerprint,
                engine_id=self.config.engine_id,
                kv_events=compat.kv_events_enabled(self),
            )
            runtime.mark_managed(self.config.engine_id)
            self._start_engine_lifecycle(store)
        return self._manager

    def get_worker(self, kv_caches: CanonicalKVCaches) -> OffloadingWorker:
        if self._worker is None:
            from kvpanel.vllm_ext.slots import PoolSlots, SlotSource, StoreSlots
            from kvpanel.vllm_ext.worker import KvpanelWorker

            pool = host_pool_for(self.config)
            if pool is None:  # one rank: the worker shares the scheduler's process and store
                slots: SlotSource = StoreSlots(self.store(), self.config.engine_id)
            else:
                pin = compat.host_pinning()
                mapper = SegmentMapper(pool, *pin) if pin is not None else SegmentMapper(pool)
                slots = PoolSlots(
                    mapper,
                    rank=self.config.parallel.rank,
                    ranks=self.config.parallel.world_size,
                    slot_bytes=self.fingerprint.chunk_bytes,
                )
            self._worker = KvpanelWorker(slots, kv_caches, self.blocks_per_chunk)
        return self._worker
