"""Running ``kvpanel serve`` as a subprocess for a benchmark: start, wait for ready, stop.

The serve command prints JSON lines on stdout: startup phases, then
``{"event": "ready", "url": "http://127.0.0.1:PORT", "token_file": "/path"}`` once the OpenAI
server accepts requests (the control token is read from that file: it is never printed), then
status snapshots; its logs go to stderr; SIGTERM stops it (exit 0).

    OFFLOAD_MODES                  - comparison name -> ``--offload`` value
    has_disk_tier(mode)            - does this mode get ``--disk-path`` (kvpanel only)
    default_serve_prefix()         - how to invoke ``kvpanel serve`` from this interpreter
    serve_command(...)             - the full argv for one mode
    serve_env(offload)             - the environment for one mode's server
    ServeProcess.start(argv, ...)  - start it and wait for "ready" (raises ServeFailed)
    ServeProcess.stop()            - SIGTERM, wait, SIGKILL the process group if it hangs
    ServeProcess.stopped_event()   - the "stopped" line (did the tiers flush?)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

OFFLOAD_MODES = {
    "vanilla": "none",
    "none": "none",
    "native": "native",
    "lmcache": "lmcache",
    "kvpanel": "kvpanel",
    # kvpanel with its CPU tier only, even with --disk-path: beside "kvpanel" in one run, what
    # the disk tier costs the rounds that write it (issue 17: within 5 %)
    "kvpanel-cpu": "kvpanel",
}
STDERR_TAIL = 200
STDOUT_KEPT = 10_000
# "RuntimeError: message" / "Exception: message" (a traceback's last line, maybe behind a prefix)
_EXC_LINE = re.compile(r"\b[A-Za-z_][\w.]*(?:Error|Exception): \S.*$")


def has_disk_tier(mode: str) -> bool:
    """Only the ``kvpanel`` mode gets the disk tier: the other engines have none, and
    ``kvpanel-cpu`` is kvpanel without it."""
    return mode == "kvpanel"


class ServeFailed(RuntimeError):
    """The server exited or never became ready; the message ends with its last stderr line."""


def default_serve_prefix() -> list[str]:
    """``kvpanel serve`` from PATH, from this interpreter's bin dir, or through ``-c``."""
    exe = shutil.which("kvpanel") or shutil.which("kvpanel", path=str(Path(sys.executable).parent))
    if exe:
        return [exe, "serve"]
    code = "import sys; from kvpanel.cli import main; sys.argv[0] = 'kvpanel'; sys.exit(main())"
    return [sys.executable, "-c", code, "serve"]


def serve_command(
    prefix: Sequence[str],
    model: str,
    offload: str,
    engine_args: str = "",
    cpu_cache_gb: float | None = None,
    kv_cache_memory: str | None = None,
    num_gpu_blocks_override: int | None = None,
    disk_path: str | None = None,
    disk_cache_gb: float | None = None,
) -> list[str]:
    """argv of ``kvpanel serve MODEL --no-ui --port 0 --offload MODE --status-interval 1 ...``.

    The disk tier is kvpanel's alone: the other modes' servers refuse ``--disk-path``, so it is
    passed to the ``kvpanel`` mode only."""
    argv = [*prefix, model, "--no-ui", "--port", "0", "--offload", offload]
    argv += ["--status-interval", "1"]
    if cpu_cache_gb is not None and offload != "none":
        argv += ["--cpu-cache-gb", f"{cpu_cache_gb:g}"]
    if offload == "kvpanel" and disk_path is not None:
        argv += ["--disk-path", disk_path]
        if disk_cache_gb is not None:
            argv += ["--disk-cache-gb", f"{disk_cache_gb:g}"]
    if kv_cache_memory is not None:
        argv += ["--kv-cache-memory-bytes", str(kv_cache_memory)]
    if num_gpu_blocks_override is not None:
        argv += ["--num-gpu-blocks-override", str(num_gpu_blocks_override)]
    return argv + shlex.split(engine_args)


def serve_env(offload: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, plus what LMCache needs in ``lmcache`` mode: a fixed
    PYTHONHASHSEED (some versions key chunks with hash()), no usage reports, and INFO logs (its
    "Retrieved N out of M required tokens" lines are how the comparison checks it did work)."""
    env = dict(os.environ if base is None else base)
    if offload == "lmcache":
        env["PYTHONHASHSEED"] = "0"
        env["LMCACHE_TRACK_USAGE"] = "false"
        if env.get("LMCACHE_LOG_LEVEL", "").upper() != "DEBUG":
            env["LMCACHE_LOG_LEVEL"] = "INFO"
    return env


def _read_token(token_file: Any) -> str | None:
    from kvpanel.serve.auth import read_token_file

    if not token_file:
        return None
    try:
        return read_token_file(Path(str(token_file)))
    except (OSError, ValueError):  # ConfigError: an unsafe file is no token
        return None


class ServeProcess:
    """One ``kvpanel serve`` subprocess (in its own process group) and what it printed."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.url: str | None = None
        self.token: str | None = None
        self.ready_event: dict[str, Any] | None = None
        self.stdout_lines: deque[str] = deque(maxlen=STDOUT_KEPT)
        self.last_status: dict[str, Any] | None = None
        self.statuses: deque[dict[str, Any]] = deque(maxlen=1000)
        self._status_seen = threading.Condition()
        self._status_count = 0
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._ready = threading.Event()
        self._log: IO[str] | None = open(log_path, "w") if log_path else None  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
            env=None if env is None else dict(env),
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        ready_timeout_s: float,
        log_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ServeProcess:
        """Start and wait until it prints "ready"; stops it and raises ServeFailed otherwise."""
        try:
            server = cls(argv, log_path, env)
        except OSError as exc:
            raise ServeFailed(f"cannot start {argv[0]}: {exc}") from exc
        try:
            server.wait_ready(ready_timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line.rstrip("\n"))
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if event.get("event") == "ready" and not self._ready.is_set():
                self.url = str(event.get("url") or "")
                self.ready_event = event
                self.token = _read_token(event.get("token_file"))
                self._ready.set()
            else:
                with self._status_seen:
                    self.last_status = event
                    self.statuses.append(event)
                    self._status_count += 1
                    self._status_seen.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if self._log is not None:
                self._log.write(line)
                self._log.flush()
            if line.strip():
                self.stderr_tail.append(line.rstrip())

    def last_stderr_line(self) -> str:
        return self.stderr_tail[-1] if self.stderr_tail else "(no stderr output)"

    def failure_line(self) -> str:
        """The most telling stderr line: the root cause when vLLM printed one (the last
        ``SomeError: message`` line that is not a "see root cause above" wrapper), else the last
        error-looking line, else the last line."""
        for line in reversed(self.stderr_tail):
            m = _EXC_LINE.search(line)
            if m and "root cause above" not in line:
                return m.group(0).strip()
        for line in reversed(self.stderr_tail):
            if any(k in line for k in ("Error", "ERROR", "error:", "refuses", "not supported")):
                return line.strip()
        return self.last_stderr_line().strip()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None:
                for t in self._threads:
                    t.join(timeout=5)
                raise ServeFailed(
                    f"exited with code {self.proc.returncode} before ready: {self.failure_line()}"
                )
            if time.monotonic() > deadline:
                raise ServeFailed(f"not ready after {timeout_s:g}s: {self.last_stderr_line()}")
        if not self.url:
            raise ServeFailed("the ready event has no url")

    def fresh_status(self, lines: int = 2, timeout_s: float = 5.0) -> dict[str, Any] | None:
        """The status after ``lines`` more status lines (the first may have been built before
        the caller's work ended); the latest one seen if the server stops printing them."""
        with self._status_seen:
            target = self._status_count + lines
            self._status_seen.wait_for(
                lambda: self._status_count >= target or self.proc.poll() is not None,
                timeout=timeout_s,
            )
            return self.last_status

    def stopped_event(self) -> dict[str, Any] | None:
        """``{"event": "stopped", "flushed": bool}``, the line printed after the tiers' flush
        on SIGTERM; None if the server printed none (killed, or not ``kvpanel serve``)."""
        with self._status_seen:
            return next((e for e in reversed(self.statuses) if e.get("event") == "stopped"), None)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL to its process group after ``timeout_s``; the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        # Children the server left behind in its group (e.g. engine-core workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for t in self._threads:
            t.join(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode
