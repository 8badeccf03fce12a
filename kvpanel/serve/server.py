"""vLLM's AsyncLLM and OpenAI app, run by kvpanel on an event loop in a background thread.

The main thread keeps signals, the JSON status lines and the panel. uvicorn installs no signal
handlers off the main thread, and vLLM's ``serve_http``/``run_server`` (which would) are not
used: the app is built with ``build_app`` + ``init_app_state`` and served by our own
``uvicorn.Server`` on sockets bound before the engine starts (serve.preflight: a busy port fails
in seconds, not after the model loaded; ``--port 0`` works: the real port is read back).

Primitives: EngineServer(opts, hub, token, args, sockets).start() -> waits for ready; .url;
.stop().
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
from typing import Any

from kvpanel.serve.hub import StatusHub
from kvpanel.serve.options import ServeError, ServeOptions
from kvpanel.serve.startup import StartupPhases
from kvpanel.serve.vllm_flags import flag_value, world_size

log = logging.getLogger("kvpanel")


def renderer_workers() -> int:
    """Prompt-processing threads for vLLM's API server: half this process's cores, at most 8.

    vLLM's default is one thread, which tokenizes the prompts of concurrent requests one after
    another: 60-90 ms per 20k-token gpt-oss prompt, so cache hits that load in ~15 ms wait for
    their turn. On gpt-oss-120b (docs/benchmarks.md) 8 threads took kvpanel's query-round mean
    TTFT from 0.644 to 0.586 s. vLLM routes these threads' tokenizer calls through a pool
    of deep copies (threads + 1), so they do not share one tokenizer."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores // 2))


def vllm_argv(opts: ServeOptions, model: str, kv_config: dict[str, Any] | None) -> list[str]:
    args = list(opts.vllm_args)
    if flag_value(args, "--kv-transfer-config") is not None and kv_config is not None:
        raise ServeError("--kv-transfer-config is set by kvpanel; use --offload none to pass yours")
    args = ["--model", model, *args]
    if flag_value(args, "--distributed-executor-backend") is None and world_size(args) == 1:
        # One worker: in the scheduler's process, sharing its store (see vllm_ext.runtime).
        # Several (TP) run on vLLM's multiprocess executor and share the store's host pool.
        args += ["--distributed-executor-backend", "uni"]
    if flag_value(args, "--host") is None:
        args += ["--host", "127.0.0.1"]  # loopback unless told otherwise
    # vLLM refuses several renderer threads for some pooling setups; leave those alone.
    generating = flag_value(args, "--runner") in (None, "generate", "auto")
    if generating and flag_value(args, "--renderer-num-workers") is None:
        from kvpanel.vllm_ext.compat import has_engine_arg  # imports vLLM: only when serving

        workers = renderer_workers()
        if workers > 1 and has_engine_arg("renderer_num_workers"):
            args += ["--renderer-num-workers", str(workers)]
    if kv_config is not None:
        args += ["--kv-transfer-config", json.dumps(kv_config)]
    return args


def engine_kv_bytes(vllm_config: Any) -> int:
    """Bytes of the engine's own (GPU, or CPU-platform) KV cache, estimated from its geometry.

    Only until kvpanel's worker reports what vLLM allocated (StatusHub takes that figure), and
    for the offload modes without kvpanel's worker: it counts every layer's page per block, so
    for hybrid models whose layer groups share blocks (gpt-oss) it reads high (2x for gpt-oss)."""
    try:
        mc, cc, pc = vllm_config.model_config, vllm_config.cache_config, vllm_config.parallel_config
        per_token = (
            2
            * mc.get_num_layers(pc)
            * mc.get_num_kv_heads(pc)
            * mc.get_head_size()
            * (2 if "16" in str(cc.cache_dtype) or cc.cache_dtype == "auto" else 1)
        )
        return int((cc.num_gpu_blocks or 0) * cc.block_size * per_token)
    except Exception:  # geometry fields move between versions; the figure is informative only
        return 0


class EngineServer:
    def __init__(
        self,
        opts: ServeOptions,
        hub: StatusHub,
        token: str,
        args: argparse.Namespace,
        api_sock: socket.socket,
        control_sock: socket.socket | None = None,
        phases: StartupPhases | None = None,
    ):
        """``args``: vLLM's parsed flags (preflight.parse_vllm_args); the sockets are bound
        (preflight.listen_socket) and served once the engine is up."""
        self.opts, self.hub, self.token, self.args = opts, hub, token, args
        self._api_sock, self._control_sock = api_sock, control_sock
        self.phases = phases or StartupPhases()
        self.url: str | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.finished = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[Any] = []
        self._thread = threading.Thread(target=self._run, name="kvpanel-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # surface startup failures to the main thread
            self.error = e
        finally:
            for sock in (self._api_sock, self._control_sock):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            self.ready.set()
            self.finished.set()

    async def _main(self) -> None:
        import uvicorn
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        from kvpanel.serve.control_api import make_router
        from kvpanel.serve.stat_logger import make_stat_logger_factory
        from kvpanel.vllm_ext.compat import server_api

        _, build_app, init_app_state = server_api()
        self._loop = asyncio.get_running_loop()
        args = self.args
        self.phases.mark("reading_config")
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        self.phases.mark("starting_engine")
        engine = AsyncLLM.from_vllm_config(
            vllm_config=vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            stat_loggers=[make_stat_logger_factory(self.hub.samples)],
            enable_log_requests=getattr(engine_args, "enable_log_requests", False),
            disable_log_stats=engine_args.disable_log_stats,
        )
        self.phases.mark("starting_api")  # the engine is up (its log may have said so already)
        try:
            self.hub.engine_kv_bytes = engine_kv_bytes(engine.vllm_config)
            tasks = await engine.get_supported_tasks()
            app = build_app(args, tasks, engine.model_config)
            await init_app_state(engine, app.state, args, tasks)
            router = make_router(self.hub, self.token)
            control_app = app
            if self.opts.control_port is not None:
                from fastapi import FastAPI

                control_app = FastAPI()
            control_app.include_router(router)
            from kvpanel.serve import prom

            prom.register(self.hub)

            sock = self._api_sock
            sock.listen(2048)
            host, port = sock.getsockname()[:2]
            if self.opts.control_port is None:
                _warn_if_exposed(host, port)
            self.url = f"http://{_url_host(host)}:{port}"
            self.hub.base_url = f"http://{_url_host(host, loopback=True)}:{port}"
            socks = [(app, sock)]
            if control_app is not app:
                csock = self._control_sock
                assert csock is not None, "--control-port needs its socket bound in preflight"
                csock.listen(2048)
                _warn_if_exposed(*csock.getsockname()[:2])
                socks.append((control_app, csock))
                self.control_url = (
                    f"http://{_url_host(csock.getsockname()[0])}:{csock.getsockname()[1]}"
                )
            serve_tasks = []
            for a, s in socks:
                server = uvicorn.Server(
                    uvicorn.Config(a, log_level="warning", access_log=False, lifespan="on")
                )
                self._servers.append(server)
                serve_tasks.append(asyncio.create_task(server.serve(sockets=[s])))
            while not all(s.started for s in self._servers):
                if any(t.done() for t in serve_tasks):
                    break
                await asyncio.sleep(0.05)
            self.ready.set()
            await asyncio.gather(*serve_tasks)
        finally:
            engine.shutdown()
            # Drop it here, while the interpreter is whole: AsyncLLM.__del__ shuts down again
            # and fails noisily if it only runs during interpreter teardown.
            del engine
            gc.collect()

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the HTTP servers to finish; the engine shuts down after them."""
        loop = self._loop
        if loop is not None and not loop.is_closed():

            def _exit() -> None:
                for s in self._servers:
                    s.should_exit = True

            loop.call_soon_threadsafe(_exit)
        self.finished.wait(timeout)


def _warn_if_exposed(host: str, port: int) -> None:
    """A control API reachable beyond loopback is never silent: say so on stderr."""
    try:
        loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        # Printed, not logged: once vLLM is up, records of the "kvpanel" logger do not reach
        # stderr in --no-ui runs.
        print(
            f"kvpanel serve: warning: the control API (/kvpanel/v1) is reachable beyond "
            f"loopback on {host}:{port}; every request needs the token",
            file=sys.stderr,
            flush=True,
        )


def _url_host(host: str, loopback: bool = False) -> str:
    if host in ("0.0.0.0", "::", "") and loopback:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
