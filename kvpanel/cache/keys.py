"""Content keys for KV-cache chunks.

Primitives:
- ``Fingerprint``: everything that makes KV bytes incompatible (model, dtype, layout, sizes).
- ``ChunkKey``: 16-byte key naming one chunk of KV data under one fingerprint.
- ``chunk_key``: re-key an external (e.g. vLLM prefix-chained block) hash under a fingerprint.
- ``prefix_chunk_keys``: prefix-chained keys for the full chunks of a token sequence.

All hashing is blake2b with fixed inputs, so keys are identical across processes and
machines (no Python ``hash()``, no random seeds).
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NewType, TypeAlias

import numpy as np
import torch

ChunkKey = NewType("ChunkKey", bytes)
# Python lists/tuples as vLLM hands them out; arrays and tensors take a zero-copy fast path.
TokenIds: TypeAlias = Sequence[int] | np.ndarray | torch.Tensor

KEY_BYTES = 16
# The chain starts from a fixed all-zero "previous key" so every link hashes the same layout.
_CHAIN_ROOT = bytes(KEY_BYTES)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Identity of a KV layout; chunks are only ever shared between equal fingerprints."""

    model: str
    dtype: str
    layout: str
    block_tokens: int
    chunk_tokens: int
    chunk_bytes: int
    extra: str = ""

    def to_json(self) -> str:
        # Sorted keys and no whitespace: the canonical form that digest() hashes.
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)

    def digest(self) -> bytes:
        return _fingerprint_digest(self)

    def hex(self) -> str:
        return self.digest().hex()


@functools.lru_cache(maxsize=64)
def _fingerprint_digest(fp: Fingerprint) -> bytes:
    # Cached because chunk_key() needs it per block on the scheduling path.
    return hashlib.blake2b(fp.to_json().encode(), digest_size=KEY_BYTES).digest()


def chunk_key(fp: Fingerprint, external_key: bytes) -> ChunkKey:
    """Key for a chunk named by an external hash (already prefix-chained by its producer)."""
    return ChunkKey(hashlib.blake2b(external_key, digest_size=KEY_BYTES, key=fp.digest()).digest())


@functools.lru_cache(maxsize=32)
def _int32_packer(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}i")


def _tokens_as_le_int32(token_ids: Any, count: int) -> bytes:
    """The first ``count`` tokens as little-endian int32 bytes, without per-token Python calls."""
    if isinstance(token_ids, np.ndarray):
        return np.ascontiguousarray(token_ids[:count], dtype="<i4").tobytes()
    if isinstance(token_ids, torch.Tensor):
        arr = token_ids[:count].detach().cpu().numpy()
        return np.ascontiguousarray(arr, dtype="<i4").tobytes()
    if isinstance(token_ids, (list, tuple)):
        # One struct.pack over the whole prefix is ~3x faster than array/numpy for Python lists.
        return _int32_packer(count).pack(*token_ids[:count])
    arr = np.fromiter(token_ids, dtype=np.int64, count=count).astype("<i4")
    return arr.tobytes()


def prefix_chunk_keys(fp: Fingerprint, token_ids: TokenIds, chunk_tokens: int) -> list[ChunkKey]:
    """Prefix-chained keys of the full ``chunk_tokens``-sized chunks of ``token_ids``.

    key_i = blake2b16(fp.digest() || key_{i-1} || le_int32(tokens of chunk i)), key_{-1} = 0^16,
    so a chunk's key depends on every token before it.
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    n_chunks = len(token_ids) // chunk_tokens
    if n_chunks == 0:
        return []
    packed = _tokens_as_le_int32(token_ids, n_chunks * chunk_tokens)
    view = memoryview(packed)
    step = chunk_tokens * 4
    fp_digest = fp.digest()
    prev = _CHAIN_ROOT
    keys: list[ChunkKey] = []
    blake2b = hashlib.blake2b
    for i in range(n_chunks):
        h = blake2b(fp_digest, digest_size=KEY_BYTES)
        h.update(prev)
        h.update(view[i * step : (i + 1) * step])
        prev = h.digest()
        keys.append(ChunkKey(prev))
    return keys
