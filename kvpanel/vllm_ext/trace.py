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
    sched   - vLLM's scheduler made a step (``new``: requests computed for the first time,
              e.g. right after their load; ``prefill``: request -> tokens, for those given
              more than one token; ``n``: requests in the step; ``s``: seconds inside
              ``schedule()``, kvpanel's lookups and reservations included; ``step``: its
              number in this process; ``pid``)                       [engine probe]
    upd     - that step's output reached the scheduler (``step``, ``pid``; ``s``: seconds
              inside ``update_from_output()``). With async scheduling (vLLM's default) the
              next step is scheduled before this one's output is in: pair by ``step``, not
              by order                                                 [engine probe]
    out1    - a request's first output token left vLLM's scheduler        [engine probe]
    fin     - a request finished in vLLM's scheduler                      [engine probe]

The engine probe (``install_engine_probe``, called by the spec when the trace is on) wraps
two methods of vLLM's ``Scheduler`` class; it exists to see vLLM's side of a handoff, is
never installed without ``KVPANEL_TRACE``, and turns itself off if those methods moved.

Lines are buffered and written every ``_FLUSH_EVERY`` events, every ``_FLUSH_S`` seconds (a
daemon thread: vLLM's engine process may end without running ``atexit``) and at exit, so the
engine loop pays a ``json.dumps`` and a list append per event.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import threading
import time
from typing import Any

ENV = "KVPANEL_TRACE"
_FLUSH_EVERY = 512
_FLUSH_S = 0.5


class _Trace:
    def __init__(self, path: str | None, flush_s: float | None = _FLUSH_S):
        self.path = path
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        if path:
            atexit.register(self.flush)
            if flush_s:
                threading.Thread(
                    target=self._flush_loop, args=(flush_s,), name="kvpanel-trace", daemon=True
                ).start()

    def _flush_loop(self, every_s: float) -> None:
        while self.path:
            time.sleep(every_s)
            self.flush()

    def emit(self, ev: str, **fields: Any) -> None:
        if not self.path:
            return
        fields["ev"] = ev
        fields["t"] = time.time()
        line = json.dumps(fields)
        with self._lock:
            self._lines.append(line)
            full = len(self._lines) >= _FLUSH_EVERY
        if full:
            self.flush()

    def flush(self) -> None:
        # Written outside the buffer's lock: an emit waits for the file only when its line
        # fills the buffer (the timer thread writes the rest).
        with self._write_lock:
            with self._lock:
                lines, self._lines = self._lines, []
            if not lines or not self.path:
                return
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
            except OSError:  # a trace must never take the engine down
                self.path = None


_trace = _Trace(os.environ.get(ENV) or None)


def enabled() -> bool:
    return bool(_trace.path)


def emit(ev: str, **fields: Any) -> None:
    _trace.emit(ev, **fields)


def flush() -> None:
    _trace.flush()


def install_engine_probe() -> None:
    """With the trace on, emit ``sched`` / ``upd`` / ``out1`` / ``fin`` from vLLM's
    scheduler (once)."""
    if not enabled():
        return
    try:
        from vllm.v1.core.sched.scheduler import Scheduler
    except ImportError:
        return
    schedule = getattr(Scheduler, "schedule", None)
    update = getattr(Scheduler, "update_from_output", None)
    if schedule is None or update is None or getattr(Scheduler, "_kvpanel_probe", False):
        return
    started: set[str] = set()
    pid = os.getpid()
    steps = itertools.count()
    step_of: dict[int, int] = {}  # id(SchedulerOutput) -> step number, until its update

    def probed_schedule(self: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        out = schedule(self, *args, **kwargs)
        took = time.perf_counter() - began
        tokens = getattr(out, "num_scheduled_tokens", None) or {}
        new = [getattr(r, "req_id", None) for r in getattr(out, "scheduled_new_reqs", ())]
        prefill = {r: n for r, n in tokens.items() if n > 1}
        step = next(steps)
        if len(step_of) > 64:  # outputs never updated (an aborted step): do not grow
            step_of.clear()
        step_of[id(out)] = step
        # s: seconds inside schedule() (vLLM's and the connector's: kvpanel's lookups and
        # store reservations), so a slow step splits into scheduling, the model and the update.
        emit("sched", new=new, prefill=prefill, n=len(tokens), s=took, step=step, pid=pid)
        return out

    def probed_update(self: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        outs = update(self, *args, **kwargs)
        sched_out = args[0] if args else kwargs.get("scheduler_output")
        step = step_of.pop(id(sched_out), None)
        emit("upd", s=time.perf_counter() - began, step=step, pid=pid)
        for eco in (outs or {}).values():
            for o in getattr(eco, "outputs", ()):
                rid = getattr(o, "request_id", None)
                if rid is None:
                    continue
                if getattr(o, "new_token_ids", None) and rid not in started:
                    started.add(rid)
                    emit("out1", req=rid)
                if getattr(o, "finish_reason", None) is not None:
                    started.discard(rid)
                    emit("fin", req=rid)
        return outs

    Scheduler.schedule = probed_schedule  # type: ignore[method-assign]
    Scheduler.update_from_output = probed_update  # type: ignore[method-assign]
    Scheduler._kvpanel_probe = True  # type: ignore[attr-defined]
