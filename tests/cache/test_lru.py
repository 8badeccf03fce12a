from kvpanel.cache.lru import LruIndex


def test_order_touch_remove() -> None:
    lru: LruIndex[int] = LruIndex()
    for i in range(5):
        lru.add(i)
    lru.touch(0)
    lru.remove(2)
    lru.touch(99)  # unknown: ignored
    assert list(lru.victims()) == [1, 3, 4, 0]
    assert 3 in lru and 2 not in lru and len(lru) == 4


def test_pop_oldest_skips() -> None:
    lru: LruIndex[str] = LruIndex()
    for k in "abc":
        lru.add(k)
    assert lru.pop_oldest(skip=lambda k: k == "a") == "b"
    assert lru.pop_oldest(skip=lambda k: True) is None
    assert lru.pop_oldest() == "a"
    assert list(lru.victims()) == ["c"]


def test_victims_is_a_snapshot() -> None:
    lru: LruIndex[int] = LruIndex()
    for i in range(3):
        lru.add(i)
    for k in lru.victims():
        lru.remove(k)
    assert len(lru) == 0
