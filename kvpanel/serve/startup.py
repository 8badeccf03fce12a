"""What ``kvpanel serve`` is doing while the engine starts, with the time since it was launched.

Starting vLLM takes from ~20 s (a tiny model on CPU) to minutes (large models, CUDA graphs);
without a sign of progress that reads as a hang. Each phase begins at a real signal, never a
timer: kvpanel's own steps (importing vLLM, reading the model config, starting the engine) are
marked by its code; the engine's steps are recognised in the log lines vLLM writes (through the
LogTee, which sees the engine-core process's output too). Phases only move forward: a signal
for the current or an earlier phase (vLLM repeats some lines per process) is ignored, and a
phase whose signal never comes (no CUDA graphs on CPU, quieter log levels) is skipped.

Primitives: PHASES (name -> label); StartupPhases(t0).mark(name) / .feed(log_line) /
.take_new() -> [(name, elapsed_s)]; TtyProgress(fd, is_tty).show(phases, now) / .close();
StartupReporter(phases, on_phase, progress).start() / .stop().
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable

# In the order vLLM goes through them; the label is what the terminal shows.
PHASES: dict[str, str] = {
    "importing_vllm": "importing vLLM",
    "reading_config": "reading the model config",
    "starting_engine": "starting the engine",
    "loading_weights": "loading weights",
    "profiling": "profiling memory",
    "kv_cache": "allocating the KV cache",
    "warming_up": "compiling and warming up",
    "cuda_graphs": "capturing CUDA graphs",
    "starting_api": "starting the API server",
}
_ORDER = {name: i for i, name in enumerate(PHASES)}

# vLLM's log lines (0.26-0.32) that open a phase. Only the message text is matched, so the
# prefix (process, level, time, file) may change freely.
_LOG_SIGNALS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Starting to load model "), "loading_weights"),
    # The weights are in: vLLM now runs a dummy batch to measure memory (and compiles).
    (re.compile(r"Loading weights took |Model loading took "), "profiling"),
    (re.compile(r"Available KV cache memory: |\bKV cache size: [\d,]+ tokens"), "kv_cache"),
    (re.compile(r"Compile and warming up model for size "), "warming_up"),
    (re.compile(r"Capturing CUDA graphs"), "cuda_graphs"),
    (re.compile(r"init engine \(profile, create kv cache, warmup model\) took "), "starting_api"),
)


class StartupPhases:
    """The phases seen so far; thread-safe (the log pump, the engine thread and the main
    thread all report)."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self._lock = threading.Lock()
        self._seen: list[tuple[str, float]] = []
        self._taken = 0
        self._closed = False

    def mark(self, name: str) -> None:
        """``name`` began now, unless a later phase already did (or startup is over)."""
        rank = _ORDER[name]  # KeyError: not a phase (a typo in kvpanel's own marks)
        with self._lock:
            if self._closed or (self._seen and _ORDER[self._seen[-1][0]] >= rank):
                return
            self._seen.append((name, round(time.monotonic() - self.t0, 2)))

    def feed(self, line: str) -> None:
        """One line (or carriage-return segment: progress bars) of the engine's output."""
        if self._closed:
            return
        for pattern, name in _LOG_SIGNALS:
            if pattern.search(line):
                self.mark(name)
                return

    def close(self) -> None:
        """Startup is over (ready or failed): later signals are ignored."""
        with self._lock:
            self._closed = True

    def seen(self) -> list[tuple[str, float]]:
        with self._lock:
            return list(self._seen)

    def take_new(self) -> list[tuple[str, float]]:
        """The phases begun since the last call, oldest first."""
        with self._lock:
            new = self._seen[self._taken :]
            self._taken = len(self._seen)
            return new

    @property
    def current(self) -> str | None:
        with self._lock:
            return self._seen[-1][0] if self._seen else None


class TtyProgress:
    """The phases on the terminal before the panel takes it: one line per phase with the time
    it began; on a terminal, the current line also counts up, so a long phase is visibly alive.
    """

    def __init__(self, fd: int, is_tty: bool | None = None) -> None:
        self.fd = fd
        self.is_tty = os.isatty(fd) if is_tty is None else is_tty
        self._shown = 0  # phases written so far
        self._open = False  # the last line has no newline yet (it is still counting)

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError):  # the terminal went away; the server keeps going
            os.write(self.fd, text.encode())

    @staticmethod
    def line(name: str, began_s: float, now_s: float | None = None) -> str:
        text = f"kvpanel: {began_s:6.1f} s  {PHASES[name]}"
        if now_s is not None:
            text += f" ... {now_s - began_s:.0f} s"
        return text

    def show(self, phases: list[tuple[str, float]], now_s: float) -> None:
        """Draw what changed; ``phases`` is StartupPhases.seen(), ``now_s`` the time since t0."""
        out = []
        if len(phases) > self._shown:
            first = self._shown
            if self._open:  # the counting line ends: rewrite it with the phase's duration
                first -= 1
                out.append("\r\x1b[K")
                self._open = False
            for i in range(first, len(phases) - 1):
                name, began = phases[i]
                took = f" ({phases[i + 1][1] - began:.1f} s)" if self.is_tty else ""
                out.append(self.line(name, began) + took + "\n")
            name, began = phases[-1]
            if self.is_tty:
                out.append(self.line(name, began, now_s))
                self._open = True
            else:
                out.append(self.line(name, began) + "\n")
        elif self._open:
            out.append("\r\x1b[K" + self.line(*phases[-1], now_s))
        self._shown = len(phases)
        if out:
            self._write("".join(out))

    def close(self) -> None:
        """End the counting line, so what follows (the panel, an error) starts on its own."""
        if self._open:
            self._write("\n")
            self._open = False


class StartupReporter:
    """Reports phases as they begin, from its own thread (the main thread spends the first
    seconds importing vLLM, and a terminal line should count up meanwhile). ``on_phase`` gets
    each new phase (``--no-ui``: a JSON line); ``progress`` draws them on the terminal."""

    def __init__(
        self,
        phases: StartupPhases,
        on_phase: Callable[[str, float], None] | None = None,
        progress: TtyProgress | None = None,
        interval_s: float = 0.25,
    ) -> None:
        self.phases, self.on_phase, self.progress = phases, on_phase, progress
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvpanel-startup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _report(self) -> None:
        for name, elapsed in self.phases.take_new():
            if self.on_phase is not None:
                self.on_phase(name, elapsed)
        if self.progress is not None:
            self.progress.show(self.phases.seen(), time.monotonic() - self.phases.t0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._report()

    def stop(self) -> None:
        """Startup is over: report what is left, then nothing more (so "ready" or the error
        comes after the last phase)."""
        self.phases.close()
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._report()
        if self.progress is not None:
            self.progress.close()
