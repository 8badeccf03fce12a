"""Tiered KV-chunk storage (CPU slots, disk files), independent of vLLM and of the UI.

Modules: ``keys`` (fingerprints, chunk keys), ``stats`` (per-tier counters), ``lru``,
``buffers`` (payload conversions), ``cpu_tier``, ``disk_format``, ``disk_dirs``,
``disk_index``, ``disk_share``, ``disk_evict``, ``disk_probe``, ``disk_tier``, ``store`` (the
``TieredStore`` facade).
"""

from kvpanel.cache.cpu_tier import ChunkState, CpuTier, Reservation
from kvpanel.cache.disk_tier import DiskTier, DiskTierError
from kvpanel.cache.keys import ChunkKey, Fingerprint, chunk_key, prefix_chunk_keys
from kvpanel.cache.lru import LruIndex
from kvpanel.cache.stats import TierCounters, TierStats
from kvpanel.cache.store import LookupState, TieredStore

__all__ = [
    "ChunkKey",
    "ChunkState",
    "CpuTier",
    "DiskTier",
    "DiskTierError",
    "Fingerprint",
    "LookupState",
    "LruIndex",
    "Reservation",
    "TierCounters",
    "TierStats",
    "TieredStore",
    "chunk_key",
    "prefix_chunk_keys",
]
