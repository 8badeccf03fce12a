"""An operator's clear is not capacity pressure: it must not count as evictions in any tier,
while a shrinking resize (which does evict to fit) still does."""

from pathlib import Path

from conftest import CHUNK_BYTES
from test_store import store_chunks

from kvpanel.cache.keys import Fingerprint
from kvpanel.cache.store import TieredStore


def test_clear_counts_no_evictions_resize_does(tmp_path: Path, fp: Fingerprint) -> None:
    with TieredStore(fp, cpu_bytes=4 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20) as s:
        store_chunks(s, [1, 2, 3])
        assert s.flush(5)
        assert len(s.clear("cpu")) == 3 and len(s.clear("disk")) == 3
        stats = s.stats()
        assert stats["cpu"].chunks == 0 and stats["disk"].chunks == 0
        assert stats["cpu"].evictions == 0, stats["cpu"]
        assert stats["disk"].evictions == 0, stats["disk"]
        store_chunks(s, [4, 5, 6])
        evicted = s.resize("cpu", CHUNK_BYTES)
        assert len(evicted) >= 2
        assert s.stats()["cpu"].evictions == len(evicted)
