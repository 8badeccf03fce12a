"""Shared fixtures for the cache tests: a small fingerprint and random chunk payloads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the package is not installed in the dev venv
    sys.path.insert(0, str(REPO_ROOT))

from kvpanel.cache.keys import ChunkKey, Fingerprint  # noqa: E402

CHUNK_BYTES = 4096


def make_fp(model: str = "test/model", chunk_bytes: int = CHUNK_BYTES) -> Fingerprint:
    return Fingerprint(
        model=model,
        dtype="bfloat16",
        layout="test",
        block_tokens=16,
        chunk_tokens=16,
        chunk_bytes=chunk_bytes,
    )


def key(i: int) -> ChunkKey:
    return ChunkKey(i.to_bytes(16, "little"))


def payload(seed: int, nbytes: int = CHUNK_BYTES) -> torch.Tensor:
    # Random (never all-zero) bytes so a wrong slot or stale memory is caught.
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (nbytes,), dtype=torch.uint8, generator=g)


@pytest.fixture
def fp() -> Fingerprint:
    return make_fp()
