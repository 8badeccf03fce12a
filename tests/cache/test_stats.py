import threading

from kvpanel.cache.stats import TierCounters, TransferTotals


def test_snapshot_and_to_dict() -> None:
    c = TierCounters("cpu")
    c.add(hits=2, misses=1, bytes_in=10, dropped=1)
    s = c.snapshot(100, 40, 4, healthy=False, note="full")
    d = s.to_dict()
    assert d["name"] == "cpu" and d["hits"] == 2 and d["misses"] == 1 and d["dropped"] == 1
    assert (s.capacity_bytes, s.used_bytes, s.chunks) == (100, 40, 4)
    assert not s.healthy and s.note == "full"


def test_counters_are_thread_safe() -> None:
    c = TierCounters("disk")

    def bump() -> None:
        for _ in range(10_000):
            c.add(hits=1, bytes_out=3)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = c.snapshot(0, 0, 0)
    assert s.hits == 40_000 and s.bytes_out == 120_000


def test_transfer_totals_per_direction() -> None:
    t = TransferTotals()
    t.add(100, 0.5, load=True, host_seconds=0.1)
    t.add(40, 0.2, load=False)
    t.add(60, 0.25, load=True, host_seconds=0.05)
    d = t.copy().to_dict()
    assert d["load_bytes"] == 160 and d["store_bytes"] == 40
    assert abs(d["load_seconds"] - 0.75) < 1e-9 and abs(d["load_host_seconds"] - 0.15) < 1e-9
    assert d["store_seconds"] == 0.2 and d["store_host_seconds"] == 0.0
