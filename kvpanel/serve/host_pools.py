"""``kvpanel serve``'s part in the TP host pools in /dev/shm (``kvpanel.cache.host_pool``).

Before the engine starts: remove the pools of engines that were killed (their lock is free).
After it stopped: remove the pool of this run's engine if vLLM force-killed it before its store
could (vLLM SIGKILLs an engine core whose TP workers take over 5 s to exit, and the tiers were
flushed through the control socket already).

Primitives: sweep_before_start() -> the pools present; sweep_after_stop(before)
"""

from __future__ import annotations

import logging
from pathlib import Path

from kvpanel.cache.host_pool import pool_dirs, remove_pools_after_stop, remove_stale_pools

log = logging.getLogger("kvpanel")


def sweep_before_start() -> set[Path]:
    for gone in remove_stale_pools():
        log.info("kvpanel: removed %s (its engine is gone)", gone)
    return pool_dirs()


def sweep_after_stop(before: set[Path]) -> None:
    for gone in remove_pools_after_stop(before, _engine_alive):
        log.info("kvpanel: removed %s (its engine was force-stopped)", gone)


def _engine_alive() -> bool:
    import psutil  # vLLM's dependency

    try:
        children = psutil.Process().children(recursive=True)
        return any(c.status() != psutil.STATUS_ZOMBIE for c in children)
    except psutil.Error:
        return False
