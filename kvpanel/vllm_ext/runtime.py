"""The one TieredStore per engine, shared by the manager (scheduler) and worker halves.

vLLM builds the OffloadingSpec twice in the engine-core process: once for the worker (first,
when KV caches are registered) and once for the scheduler. With one worker (TP=1, the "uni"
executor) both halves run in that process, so they share the store through this registry
instead of shipping KV bytes between them. With several ranks (vLLM's multiprocess executor)
only the scheduler's store is here; the workers map its host pool (``kvpanel.cache.host_pool``).

Primitives:
    open_store(engine_id, factory)  - get or create the engine's store
    all_stores()                    - for stats and control in this process
    mark_managed / check_same_process - the guard that both halves share one process
    close_store(engine_id)          - write what is queued, release files (manager shutdown)
    close_all()                     - the same for every store (process exit, a fallback)
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable

from kvpanel.cache.store import TieredStore

log = logging.getLogger("kvpanel")

_lock = threading.Lock()
_stores: dict[str, TieredStore] = {}
_managed: set[str] = set()  # engines whose scheduler-side manager lives in this process


def open_store(engine_id: str, factory: Callable[[], TieredStore]) -> TieredStore:
    with _lock:
        store = _stores.get(engine_id)
        if store is None:
            store = factory()
            _stores[engine_id] = store
        return store


def mark_managed(engine_id: str) -> None:
    with _lock:
        _managed.add(engine_id)


def check_same_process(engine_id: str) -> None:
    """Refuse to copy KV when the scheduler's manager is not in this process.

    With a multi-process executor the worker would fill a store nobody indexes (or worse, read
    slots another process assigned): fail loudly instead of serving wrong KV.
    """
    with _lock:
        if engine_id in _managed:
            return
    raise RuntimeError(
        "kvpanel's worker runs in a different process from vLLM's scheduler; "
        "with one worker use --distributed-executor-backend uni"
    )


def all_stores() -> dict[str, TieredStore]:
    with _lock:
        return dict(_stores)


def _log_progress(bytes_left: int) -> None:
    log.info("kvpanel: engine stopping: %.1f MB left to write", bytes_left / 1e6)


def close_store(engine_id: str) -> None:
    """Write the engine's queued disk and Redis chunks (logging progress), then close it."""
    with _lock:
        store = _stores.pop(engine_id, None)
        _managed.discard(engine_id)
    if store is not None:
        store.flush(progress=_log_progress)
        store.close()


def close_all() -> None:
    with _lock:
        stores = list(_stores.values())
        _stores.clear()
    for store in stores:
        store.close()


# For a store whose manager was never shut down (vLLM's shutdown skipped): write queued
# chunks on a clean interpreter exit so a restart finds them.
atexit.register(close_all)
