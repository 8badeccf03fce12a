"""Capture everything written to fd 1 and 2, by us, vLLM and its child processes.

vLLM's engine runs in child processes that inherit the parent's stdout/stderr; on a terminal
they would write over the panel, and in ``--no-ui`` mode stdout belongs to the JSON lines. So
before vLLM starts, fds 1 and 2 are pointed at a pipe; a thread copies what arrives to a sink
(the terminal's stderr or a log file) and keeps the last lines for the panel's log pane.

Watchers (``install(watch=...)``) see every line as it arrives, split at carriage returns too:
progress bars (tqdm) redraw one line with ``\r`` and end it only when they finish.

Primitives: LogTee.install(sink_fd, watch) -> LogTee (keeps the original stdout and stderr as
``stdout_fd`` and ``tty_fd``); tee.lines(since) -> (lines, next).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence

_SEGMENT_END = re.compile(rb"[\r\n]")


class LogTee:
    def __init__(
        self,
        sink_fd: int,
        stdout_fd: int,
        tty_fd: int,
        read_fd: int,
        keep: int = 2000,
        watch: Sequence[Callable[[str], None]] = (),
    ):
        self.sink_fd = sink_fd
        self.stdout_fd = stdout_fd
        self.tty_fd = tty_fd  # the original stderr (the terminal, for the panel)
        self._read_fd = read_fd
        self._lines: deque[str] = deque(maxlen=keep)
        self._count = 0  # lines seen in total, so readers can ask for "since N"
        self._lock = threading.Lock()
        self._partial = b""
        self._watch = list(watch)
        self._watch_partial = b""
        self._thread = threading.Thread(target=self._pump, name="kvpanel-logtee", daemon=True)
        self._thread.start()

    @classmethod
    def install(
        cls, sink_fd: int | None = None, watch: Sequence[Callable[[str], None]] = ()
    ) -> LogTee:
        sys.stdout.flush()
        sys.stderr.flush()
        stdout_fd = os.dup(1)
        tty_fd = os.dup(2)
        sink = tty_fd if sink_fd is None else sink_fd
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)
        return cls(sink, stdout_fd, tty_fd, read_fd, watch=watch)

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 65536)
            except OSError:
                return
            if not data:
                return
            # If the terminal went away, keep draining so writers never block.
            with contextlib.suppress(OSError):
                os.write(self.sink_fd, data)
            text = self._partial + data
            *complete, self._partial = text.split(b"\n")
            if complete:
                with self._lock:
                    for line in complete:
                        self._lines.append(line.decode(errors="replace").rstrip("\r"))
                        self._count += 1
            if self._watch:
                self._notify(data)

    def _notify(self, data: bytes) -> None:
        *segments, self._watch_partial = _SEGMENT_END.split(self._watch_partial + data)
        for segment in segments:
            if not segment.strip():
                continue
            text = segment.decode(errors="replace")
            for watcher in self._watch:
                try:
                    watcher(text)
                except Exception:  # a watcher's bug must not stop the pump (writers would block)
                    continue

    def lines(self, since: int = 0) -> tuple[list[str], int]:
        with self._lock:
            first = self._count - len(self._lines)
            start = max(since, first)
            return list(self._lines)[start - first :], self._count
