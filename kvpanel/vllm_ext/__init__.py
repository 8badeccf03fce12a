"""kvpanel inside vLLM: its tiers behind vLLM's built-in ``OffloadingConnector``.

vLLM's OffloadingConnector keeps the scheduling, async loads and hybrid-KV (gpt-oss sliding
window) logic; kvpanel plugs in as an out-of-tree ``OffloadingSpec`` (``spec_module_path``):

    spec.KvpanelOffloadingSpec     - builds the two halves below from vLLM's OffloadingConfig
    manager.KvpanelManager         - scheduler side: lookup / load / store bookkeeping on the store
    worker.KvpanelWorker           - worker side: copies between vLLM's paged KV and store slots
    runtime                        - the per-process TieredStore both halves share
    trace                          - the opt-in KVPANEL_TRACE event trace (where time goes)
    compat                         - every vLLM version difference (0.26 .. 0.33) lives here
    kv_transfer_config(settings)   - the ``--kv-transfer-config`` dict that selects all of this

Only the spec module is named in vLLM's config; this package imports no vLLM at import time.
"""

from __future__ import annotations

from typing import Any

from kvpanel.settings import CacheSettings

SPEC_NAME = "KvpanelOffloadingSpec"
SPEC_MODULE = "kvpanel.vllm_ext.spec"


def kv_transfer_config(settings: CacheSettings) -> dict[str, Any]:
    """vLLM ``kv_transfer_config`` for the OffloadingConnector with kvpanel's tiers.

    Validates first, so a bad setting fails here, before vLLM starts.
    """
    settings = settings.validated()
    extra = settings.to_extra_config()
    extra.update(
        spec_name=SPEC_NAME,
        spec_module_path=SPEC_MODULE,
        # vLLM sizes nothing from this for an out-of-tree spec, but requires it to be present.
        cpu_bytes_to_use=max(settings.cpu_bytes, 1),
        block_size=settings.chunk_tokens,
    )
    return {
        "kv_connector": "OffloadingConnector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": extra,
    }
