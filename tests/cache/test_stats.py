import threading

from kvpanel.cache.stats import TierCounters


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
