"""kvpanel's control channel into the engine-core process, where the store lives.

vLLM runs the scheduler (and with one GPU the worker) in a child process; the API server and
the panel live in the parent. This is a small JSON-lines protocol over a Unix socket that only
the owning user can open (mode 0600):

    {"op": "stats"}                               -> {"ok": true, "tiers": {name: TierStats}}
    {"op": "resize", "tier": "cpu", "bytes": N}   -> {"ok": true, "tiers": ...}
    {"op": "clear", "tier": "cpu"}                -> {"ok": true, "tiers": ...}
    {"op": "flush", "timeout": 60}                -> {"ok": true|false, ...} (disk writes done)
    anything wrong                                -> {"ok": false, "error": "one line"}

Primitives: start_control_server(path, store) in the engine; ControlClient(path) in the parent;
engine_socket_path(path, dp_index): each data-parallel engine core's own socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import socketserver
import threading
import time
from typing import Any

import psutil

from kvpanel.cache.host_pool import SharedSegments, read_rank_reports
from kvpanel.cache.store import TieredStore
from kvpanel.settings import MAX_TIER_BYTES, fmt_size

log = logging.getLogger("kvpanel")
_servers: dict[str, socketserver.BaseServer] = {}
_lock = threading.Lock()
MAX_REQUEST = 64 * 1024


def resize_limit(store: TieredStore, tier: str) -> tuple[int, str]:
    """The largest size a tier may be resized to, and what bounds it (for the message): more
    than the machine can give is a typo. The disk tier may grow by the filesystem's free space
    (what it already holds stays counted), not to the filesystem's size."""
    if tier == "cpu":
        limit = int(psutil.virtual_memory().total * 0.9)
        memory = store.cpu.memory
        if isinstance(memory, SharedSegments):  # TP: the segments are files in /dev/shm
            free = shutil.disk_usage(memory.directory).free
            held = store.cpu.capacity_bytes
            if free + held < limit:
                return free + held, (
                    f"{fmt_size(free)} free in {memory.directory.parent} + "
                    f"{fmt_size(held)} the tier holds"
                )
        return limit, f"90% of host RAM, {fmt_size(limit)}"
    if tier == "disk" and store.disk is not None:
        free = shutil.disk_usage(store.disk.dir).free
        used = store.disk.stats().used_bytes
        return free + used, (
            f"{fmt_size(free)} free on {store.disk.dir} + {fmt_size(used)} the tier holds"
        )
    return MAX_TIER_BYTES, f"{fmt_size(MAX_TIER_BYTES)}"


# The engine's own KV cache as vLLM allocated it, reported by this process's worker.
_engine_kv_bytes = 0


def report_engine_kv_bytes(n_bytes: int) -> None:
    global _engine_kv_bytes
    _engine_kv_bytes = int(n_bytes)


def _reply(store: TieredStore, ok: bool = True) -> dict[str, Any]:
    tiers = {n: t.to_dict() for n, t in store.stats().items()}
    for name, row in tiers.items():
        # What the panel's resize preview checks against before it sends anything.
        row["max_capacity_bytes"] = resize_limit(store, name)[0]
    transfers, engine_kv_bytes = store.transfers(), _engine_kv_bytes
    memory = store.cpu.memory
    if isinstance(memory, SharedSegments):  # TP: the workers are other processes; they report
        for report in read_rank_reports(memory.directory):
            transfers.merge(report.get("transfers"))
            kv = report.get("engine_kv_bytes")
            engine_kv_bytes += kv if isinstance(kv, int) and kv > 0 else 0
    reply: dict[str, Any] = {"ok": ok, "tiers": tiers, "transfers": transfers.to_dict()}
    if engine_kv_bytes:
        reply["engine_kv_bytes"] = engine_kv_bytes
    return reply


def handle_request(store: TieredStore, request: Any) -> dict[str, Any]:
    if not isinstance(request, dict):
        return {"ok": False, "error": "request must be a JSON object"}
    op = request.get("op")
    tier = request.get("tier")
    try:
        if op == "stats":
            pass
        elif op == "resize":
            size = request.get("bytes")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                return {"ok": False, "error": f"bytes must be a non-negative integer, got {size!r}"}
            if tier not in store.stats():
                return {"ok": False, "error": f"unknown tier {tier!r}"}
            limit, bound = resize_limit(store, str(tier))
            if size > limit:
                return {
                    "ok": False,
                    "error": f"{tier} cannot grow to {fmt_size(size)}: at most "
                    f"{fmt_size(limit)} ({bound})",
                }
            store.resize(str(tier), size)
        elif op == "clear":
            if tier not in store.stats():
                return {"ok": False, "error": f"unknown tier {tier!r}"}
            store.clear(str(tier))
        elif op == "flush":
            timeout = request.get("timeout", 60)
            return _reply(store, ok=store.flush(float(timeout), progress=_log_flush_progress))
        else:
            return {"ok": False, "error": f"unknown op {op!r}"}
    except (ValueError, MemoryError) as e:  # MemoryError: no room for a grown segment
        return {"ok": False, "error": str(e)}
    return _reply(store)


def _log_flush_progress(bytes_left: int) -> None:
    log.info("kvpanel: flushing tiers: %.1f MB left to write", bytes_left / 1e6)


def start_control_server(path: str, store: TieredStore) -> None:
    """Serve the store on `path` from a daemon thread (idempotent per path)."""
    with _lock:
        if path in _servers:
            return

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    if len(line) > MAX_REQUEST:
                        reply = {"ok": False, "error": "request too large"}
                    else:
                        try:
                            reply = handle_request(store, json.loads(line))
                        except json.JSONDecodeError as e:
                            reply = {"ok": False, "error": f"malformed JSON: {e.msg}"}
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    self.wfile.flush()

        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old = os.umask(0o177)
        try:
            server = socketserver.ThreadingUnixStreamServer(path, Handler)
        finally:
            os.umask(old)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="kvpanel-control", daemon=True).start()
        _servers[path] = server
        threading.Thread(
            target=_exit_with_parent,
            args=(os.getppid(), store, path),
            name="kvpanel-parent-watch",
            daemon=True,
        ).start()


def _exit_with_parent(parent: int, store: TieredStore, path: str, poll_s: float = 0.5) -> None:
    """End this engine process when `kvpanel serve` (its parent) is gone.

    An engine core never outlives its server: after a ``kill -9`` of the server an orphan would
    hold GBs of memory and the disk tier's lock, so a restarted server would fail with "dir in
    use". Queued disk writes get a few seconds to land; the kernel then drops the lock with the
    process.
    """
    while os.getppid() == parent:
        time.sleep(poll_s)
    log.warning("kvpanel: parent process %d is gone; flushing tiers and exiting", parent)
    try:
        store.flush(timeout=10)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os._exit(1)


def engine_socket_path(path: str, dp_index: int) -> str:
    """The control socket of one engine core: with data parallelism each DP rank is an engine
    process with its own store, so ranks past 0 bind a socket of their own next to ``path``.
    (vLLM runs a non-MoE model's DP ranks as independent engines of DP size 1: only their
    index tells them apart.)"""
    return path if dp_index <= 0 else f"{path}.dp{dp_index}"


class ControlClient:
    """Blocking client for the engine's control socket (one request per call)."""

    def __init__(self, path: str, timeout: float = 120.0):
        self.path = path
        self.timeout = timeout

    def call(self, **request: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(self.path)
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        return reply
