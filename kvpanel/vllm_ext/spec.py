"""``KvpanelOffloadingSpec``: the class vLLM's OffloadingConnector loads by ``spec_module_path``.

Select it with ``kvpanel.vllm_ext.kv_transfer_config(settings)`` (or ``kvpanel serve``). Unlike
vLLM's CPUOffloadingSpec it also runs on vLLM's CPU platform: its worker copies with plain torch
there and with kvpanel's Triton kernels on CUDA.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
from pathlib import Path

from kvpanel.cache.keys import Fingerprint
from kvpanel.cache.store import TieredStore
from kvpanel.settings import CacheSettings, cache_secret_from_env
from kvpanel.vllm_ext import compat, runtime, trace
from kvpanel.vllm_ext.compat import (
    CanonicalKVCaches,
    OffloadingConfig,
    OffloadingManager,
    OffloadingSpec,
    OffloadingWorker,
)

log = logging.getLogger("kvpanel")


def model_identity(name: str) -> str:
    """A stable identity for the model's weights, not just its name.

    For a local checkout: a digest of config.json and of each weight file's name, size, head and
    tail, so regenerated or edited weights at the same path get a new identity (their KV
    differs) while a restart or a copy to another machine keeps it.
    """
    path = Path(name)
    if not path.is_dir():
        return name
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(path.iterdir()):
        if f.name == "config.json" or f.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 16))
                if size > 1 << 17:
                    fh.seek(size - (1 << 16))
                    h.update(fh.read())
    return f"{path.name}@{h.hexdigest()}"


def fingerprint_for(config: OffloadingConfig, settings: CacheSettings) -> Fingerprint:
    groups = [{"tokens": g.tokens_per_block, "layers": list(g.layer_names)} for g in config.groups]
    tokens_per_block = config.groups[0].tokens_per_block if config.groups else 0
    return Fingerprint(
        model=settings.model_id or model_identity(config.model.name),
        dtype=str(config.model.dtype),
        layout=compat.kv_cache_layout(config),
        block_tokens=tokens_per_block,
        chunk_tokens=tokens_per_block * config.cache.blocks_per_chunk,
        chunk_bytes=config.worker_kv_bytes_per_block * config.cache.blocks_per_chunk,
        extra=json.dumps(
            {"groups": groups, "tp": config.parallel.tp_size, "pp": config.parallel.pp_size},
            sort_keys=True,
        ),
    )


class KvpanelOffloadingSpec(OffloadingSpec):
    def __init__(self, config: OffloadingConfig):
        super().__init__(config)
        compat.check_supported()
        # Before vLLM 0.26's engine core draws its NONE_HASH (after the worker, which builds
        # this spec first): block hashes, and so disk/Redis keys, must survive restarts.
        compat.ensure_deterministic_block_hashes()
        trace.install_engine_probe()  # KVPANEL_TRACE only: vLLM's side of each handoff
        self.settings = CacheSettings.from_extra_config(self.extra_config)
        if config.parallel.world_size != 1:
            raise ValueError(
                "kvpanel currently serves one worker per engine (TP=PP=1); "
                f"this engine has world_size={config.parallel.world_size}"
            )
        self.fingerprint = fingerprint_for(config, self.settings)
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
            )

        store = runtime.open_store(self.config.engine_id, factory)
        if self.settings.control_socket:
            from kvpanel.vllm_ext.control import start_control_server

            start_control_server(self.settings.control_socket, store)
            # `kvpanel serve` owns this engine's lifecycle: a Ctrl-C in its terminal reaches
            # every process of the group, and the engine must not die before the parent has
            # flushed queued disk writes through the control socket.
            with contextlib.suppress(ValueError):  # not the main thread: leave it alone
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        return store

    def get_manager(self) -> OffloadingManager:
        if self._manager is None:
            from kvpanel.vllm_ext.manager import KvpanelManager

            self._manager = KvpanelManager(self.store(), self.fingerprint)
            runtime.mark_managed(self.config.engine_id)
        return self._manager

    def get_worker(self, kv_caches: CanonicalKVCaches) -> OffloadingWorker:
        if self._worker is None:
            from kvpanel.vllm_ext.worker import KvpanelWorker

            self._worker = KvpanelWorker(
                self.store(), kv_caches, self.blocks_per_chunk, self.config.engine_id
            )
        return self._worker
