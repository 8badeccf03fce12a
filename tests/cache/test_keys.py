import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, make_fp

from kvpanel.cache.keys import Fingerprint, chunk_key, prefix_chunk_keys

TOKENS = [(i * 7919) % 50_000 for i in range(1000)]


def test_fingerprint_json_round_trip_and_digest() -> None:
    fp = make_fp()
    assert Fingerprint.from_json(fp.to_json()) == fp
    assert len(fp.digest()) == 16
    assert fp.hex() == fp.digest().hex()
    assert make_fp(model="other").digest() != fp.digest()


def test_prefix_keys_full_chunks_only() -> None:
    fp = make_fp()
    assert len(prefix_chunk_keys(fp, TOKENS, 256)) == 3
    assert prefix_chunk_keys(fp, TOKENS[:255], 256) == []
    assert all(len(k) == 16 for k in prefix_chunk_keys(fp, TOKENS, 256))
    with pytest.raises(ValueError):
        prefix_chunk_keys(fp, TOKENS, 0)


def test_prefix_chaining() -> None:
    fp = make_fp()
    base = prefix_chunk_keys(fp, TOKENS, 100)
    changed = list(TOKENS)
    changed[5] += 1
    assert all(a != b for a, b in zip(base, prefix_chunk_keys(fp, changed, 100), strict=True))
    late = list(TOKENS)
    late[950] += 1
    other = prefix_chunk_keys(fp, late, 100)
    assert other[:9] == base[:9] and other[9] != base[9]


def test_input_types_agree() -> None:
    fp = make_fp()
    ref = prefix_chunk_keys(fp, TOKENS, 64)
    assert prefix_chunk_keys(fp, tuple(TOKENS), 64) == ref
    assert prefix_chunk_keys(fp, np.array(TOKENS, dtype=np.int64), 64) == ref
    assert prefix_chunk_keys(fp, torch.tensor(TOKENS), 64) == ref
    assert prefix_chunk_keys(fp, range(len(TOKENS)), 64) == prefix_chunk_keys(
        fp, list(range(len(TOKENS))), 64
    )


def test_different_fingerprint_different_keys() -> None:
    a, b = make_fp(), make_fp(model="other/model")
    assert set(prefix_chunk_keys(a, TOKENS, 64)).isdisjoint(prefix_chunk_keys(b, TOKENS, 64))
    assert chunk_key(a, b"block-hash") != chunk_key(b, b"block-hash")
    assert chunk_key(a, b"block-hash") == chunk_key(a, b"block-hash")
    assert chunk_key(a, b"block-hash") != chunk_key(a, b"block-hasi")


def test_keys_deterministic_across_processes() -> None:
    code = (
        "from conftest import make_fp; "
        "from kvpanel.cache.keys import prefix_chunk_keys, chunk_key; "
        "fp = make_fp(); toks = [(i * 7919) % 50_000 for i in range(1000)]; "
        "print(','.join(k.hex() for k in prefix_chunk_keys(fp, toks, 64))); "
        "print(chunk_key(fp, b'block-hash').hex())"
    )
    here = os.path.dirname(__file__)
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{here}",
        "PYTHONHASHSEED": "12345",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    ).stdout.split()
    fp = make_fp()
    assert out[0] == ",".join(k.hex() for k in prefix_chunk_keys(fp, TOKENS, 64))
    assert out[1] == chunk_key(fp, b"block-hash").hex()
