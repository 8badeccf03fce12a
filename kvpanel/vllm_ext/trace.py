"""Opt-in event trace of the offload path: where a request's time goes between two waves.

``KVPANEL_TRACE=/path/trace.jsonl`` (read once, in the engine-core process) makes both halves
append one JSON line per event, with the wall clock ``t`` (``time.time()``, comparable with the
benchmark client's ``started_at`` on the same host). Unset, ``emit`` returns at once.

Events (``ev``):
    ask     - scheduler: the first lookup of a request (it reached the head of the queue)
    admit   - scheduler: a load was admitted (``prepare_load``), ``chunks`` of it
    loaded  - scheduler: vLLM reported the load done (``complete_load``)
    submit  - worker: a job was enqueued (``job``, ``load``, ``bytes``, ``host_s``)
    done    - worker: its end event was seen (``job``, ``gpu_s``: start to end event)
    step    - worker: ``get_finished`` was called (once per engine step)

Lines are buffered and written every ``_FLUSH_EVERY`` events and at exit, so the engine loop
pays a list append per event.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from typing import Any

ENV = "KVPANEL_TRACE"
_FLUSH_EVERY = 512


class _Trace:
    def __init__(self, path: str | None):
        self.path = path
        self._lines: list[str] = []
        self._lock = threading.Lock()
        if path:
            atexit.register(self.flush)

    def emit(self, ev: str, **fields: Any) -> None:
        if not self.path:
            return
        fields["ev"] = ev
        fields["t"] = time.time()
        with self._lock:
            self._lines.append(json.dumps(fields))
            if len(self._lines) >= _FLUSH_EVERY:
                self._write()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        if not self._lines or not self.path:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n".join(self._lines) + "\n")
        except OSError:  # a trace must never take the engine down
            self.path = None
        self._lines.clear()


_trace = _Trace(os.environ.get(ENV) or None)


def enabled() -> bool:
    return bool(_trace.path)


def emit(ev: str, **fields: Any) -> None:
    _trace.emit(ev, **fields)


def flush() -> None:
    _trace.flush()
