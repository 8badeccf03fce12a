"""Everything that differs between the vLLM versions kvpanel supports (0.26 .. 0.33).

The OffloadingSpec / OffloadingManager / OffloadingWorker API kvpanel uses is the same from 0.26
(the H200 bundle) to 0.33 in its abstract methods; what moves is collected here so the rest
imports from one place. docs/vllm-versions.md lists each difference and how it is handled;
tests/vllm_ext/test_compat_versions.py checks kvpanel's classes against 0.33's recorded ABCs.
"""

from __future__ import annotations

import os
from typing import Any

import vllm
from vllm.platforms import current_platform
from vllm.v1.kv_offload.base import (  # noqa: F401  (re-exported)
    BlockIDsLoadStoreSpec,
    CanonicalKVCaches,
    GPULoadStoreSpec,
    LoadStoreSpec,
    LookupResult,
    OffloadingEvent,
    OffloadingManager,
    OffloadingSpec,
    OffloadingWorker,
    OffloadKey,
    PrepareStoreOutput,
    ReqContext,
    RequestOffloadingContext,
    ScheduleEndContext,
    TransferResult,
)
from vllm.v1.kv_offload.config import OffloadingConfig  # noqa: F401

try:  # 0.32+: an event's medium is an enum (kept private: 0.26 has no Medium to re-export)
    from vllm.v1.kv_offload.base import Medium as _Medium

    CPU_MEDIUM: Any = _Medium.CPU
except ImportError:  # 0.26: a plain string
    CPU_MEDIUM = "CPU"

try:  # 0.32+: where a hit's KV came from (get_load_source, per-source prompt-token metrics)
    from vllm.v1.metrics.cache_hit_source import CacheHitSource
except ImportError:  # older: vLLM never asks; the names keep the manager importable
    import enum

    class CacheHitSource(str, enum.Enum):  # type: ignore[no-redef]
        HOST = "host"
        DISK = "disk"
        EXTERNAL_UNSPECIFIED = "external_unspecified"


def version_tuple() -> tuple[int, int]:
    major, minor = vllm.__version__.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


VLLM_VERSION = version_tuple()
SUPPORTED = ((0, 26), (0, 33))


def check_supported() -> None:
    lo, hi = SUPPORTED
    if not lo <= VLLM_VERSION <= hi:
        # Not fatal: newer releases usually keep this API; say so once in the log.
        import logging

        logging.getLogger("kvpanel").warning(
            "kvpanel is tested with vLLM %d.%d..%d.%d; this is %s",
            *lo,
            *hi,
            vllm.__version__,
        )


def has_engine_arg(name: str) -> bool:
    """Whether this vLLM's ``EngineArgs`` has the field ``name`` (serve flags come and go)."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    return name in {f.name for f in dataclasses.fields(EngineArgs)}


def kv_events_enabled(spec: OffloadingSpec) -> bool:
    """Whether vLLM drains the manager's ``take_events`` (``--kv-events-config`` with
    ``enable_kv_cache_events``): otherwise recorded events would only pile up."""
    events = getattr(spec, "kv_events_config", None)  # 0.32+
    if events is None:
        events = getattr(spec, "config", None)
    return bool(getattr(events, "enable_kv_cache_events", False))


def kv_cache_layout(config: OffloadingConfig) -> str:
    # 0.32+ records the resolved layout; 0.26 always asks for HND for offloading.
    return getattr(config, "kv_cache_layout", None) or "HND"


def is_cuda() -> bool:
    return bool(current_platform.is_cuda_alike())


# vLLM's prefix-caching hashes that are not collision resistant: their NONE_HASH seed is what
# keeps a tenant from forging a prompt whose block hashes equal another prompt's.
WEAK_BLOCK_HASHES = frozenset({"xxhash", "xxhash_cbor"})
# PYTHONHASHSEED values that are no secret: kvpanel's own default, and Python's word for a
# random hash() seed, which vLLM would hash as the string itself.
_PUBLIC_SEEDS = frozenset({None, "0", "random"})


def ensure_deterministic_block_hashes(hash_algo: str | None = "sha256") -> None:
    """vLLM 0.26 draws its NONE_HASH at random unless PYTHONHASHSEED is set, which would make
    block hashes (and so kvpanel's disk keys) differ after every restart. Set it for the engine
    processes started after this call. 0.32+ derives NONE_HASH from a fixed seed for sha256.

    Never for a weak hash (``--prefix-caching-hash-algo xxhash``): a public seed would let a
    tenant forge collisions; vLLM then draws the seed at random and kvpanel keeps the disk and
    Redis tiers off (``weak_block_hashes``) unless the operator set a secret PYTHONHASHSEED."""
    if hash_algo not in WEAK_BLOCK_HASHES:
        os.environ.setdefault("PYTHONHASHSEED", "0")


def weak_block_hashes(hash_algo: str | None) -> bool:
    """Block hashes a tenant could collide on purpose: a non-cryptographic hash whose seed is
    public (kvpanel's 0) or not shared (unset: random per process)."""
    return hash_algo in WEAK_BLOCK_HASHES and os.environ.get("PYTHONHASHSEED") in _PUBLIC_SEEDS


def server_api() -> tuple[Any, Any, Any]:
    """(make_arg_parser, build_app, init_app_state): moved from ``vllm.entrypoints.openai``
    (0.26) to ``vllm.entrypoints.launchers`` (0.32+); 0.33 moved ``make_arg_parser`` on to
    ``vllm.entrypoints.common.cli_args``. Signatures are the same in all three."""
    try:
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app

        try:
            from vllm.entrypoints.common.cli_args import make_arg_parser
        except ImportError:  # vLLM 0.32
            from vllm.entrypoints.launchers.cli_args import (  # type: ignore[no-redef]
                make_arg_parser,
            )
    except ImportError:  # vLLM 0.26
        from vllm.entrypoints.openai.api_server import (  # type: ignore[no-redef]
            build_app,
            init_app_state,
        )
        from vllm.entrypoints.openai.cli_args import make_arg_parser  # type: ignore[no-redef]
    return make_arg_parser, build_app, init_app_state


def engine_vllm_config(config: OffloadingConfig) -> Any | None:
    """The ``VllmConfig`` of the engine building this spec, or None.

    The fingerprint needs what OffloadingConfig leaves out (the hf_config after overrides, the
    model dtype next to an fp8 KV dtype, quantization). 0.32's OffloadingConfig does not carry
    it, and the scheduler builds its connector outside ``set_current_vllm_config``; the spec is
    built inside ``OffloadingConnector.__init__(vllm_config, ...)``, so it is found on the stack.
    A VllmConfig handed in directly (older OffloadingSpec(vllm_config, ...)) is used as is; the
    current config set by ``set_current_vllm_config`` is the last resort.
    """
    import inspect

    if hasattr(config, "model_config"):
        return config
    frame = inspect.currentframe()
    try:
        depth = 0
        while frame is not None and depth < 16:
            candidate = frame.f_locals.get("vllm_config")
            if hasattr(candidate, "model_config") and hasattr(candidate, "cache_config"):
                return candidate
            frame, depth = frame.f_back, depth + 1
    finally:
        del frame
    from vllm.config import get_current_vllm_config_or_none

    current = get_current_vllm_config_or_none()
    if current is not None and getattr(current, "kv_transfer_config", None) is not None:
        return current
    return None


def host_pinning() -> tuple[Any, Any, Any] | None:
    """(register, unregister, thread_init) that page-lock a host mapping for DMA on CUDA (the
    TP host pool's segments), or None where copies need no pinning (vLLM's CPU platform).

    0.32+ ship vLLM's own helpers (they clear the CUDA error state after a failure, and fail
    soft: pageable copies still work); older versions use torch's cudart binding."""
    if not is_cuda():
        return None
    import logging

    import torch

    try:
        from vllm.v1.kv_offload.cpu.host_register import host_register, host_unregister

        def register(t: Any) -> bool:
            return bool(host_register(t.data_ptr(), t.numel()))

        def unregister(t: Any) -> None:
            host_unregister(t.data_ptr())

    except ImportError:
        cudart = torch.cuda.cudart()

        def register(t: Any) -> bool:
            err = cudart.cudaHostRegister(t.data_ptr(), t.numel(), 0)
            if int(err) != 0:
                clear = getattr(cudart, "cudaGetLastError", None)
                if clear is not None:
                    clear()
                logging.getLogger("kvpanel").warning(
                    "kvpanel: cudaHostRegister failed (%s): pageable copies", err
                )
                return False
            return True

        def unregister(t: Any) -> None:
            cudart.cudaHostUnregister(t.data_ptr())

    device = torch.cuda.current_device()
    return register, unregister, lambda: torch.cuda.set_device(device)
