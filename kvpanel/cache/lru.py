"""Least-recently-used ordering of keys.

Primitives:
- ``LruIndex``: ordered set of keys, oldest first; callers decide which victims are evictable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class LruIndex(Generic[K]):
    """Not thread-safe: the owning tier guards it with its own lock."""

    __slots__ = ("_order",)

    def __init__(self) -> None:
        self._order: OrderedDict[K, None] = OrderedDict()

    def add(self, key: K) -> None:
        """Insert as most recently used (moves it if already present)."""
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: K) -> None:
        """Mark as most recently used; unknown keys are ignored."""
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: K) -> None:
        self._order.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __len__(self) -> int:
        return len(self._order)

    def victims(self) -> Iterator[K]:
        """Keys oldest-first; a snapshot, so callers may remove while iterating."""
        return iter(list(self._order))

    def pop_oldest(self, skip: Callable[[K], bool] = lambda _k: False) -> K | None:
        """Remove and return the oldest key for which ``skip`` is false, or None."""
        for key in self._order:
            if not skip(key):
                del self._order[key]
                return key
        return None

    def clear(self) -> None:
        self._order.clear()
