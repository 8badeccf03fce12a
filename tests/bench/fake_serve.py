"""A stand-in for ``kvpanel serve``: JSON lines on stdout, logs on stderr, exit 0 on SIGTERM.

``--offload native`` fails like vLLM's CPU platform does; everything else serves FakeServer.
``--offload lmcache`` also logs LMCache-style retrieval lines on stderr: one per request, each
retrieving ``FAKE_LMCACHE_RETRIEVED`` tokens (no lines when unset), and reports the
LMCache-related environment it got in its status lines.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.fake_server import FakeServer  # noqa: E402

LMCACHE_ENV = ("PYTHONHASHSEED", "LMCACHE_TRACK_USAGE", "LMCACHE_LOG_LEVEL")
# LMCache 0.5's format, colour codes included (lmcache.logging.CustomFormatter).
RETRIEVED_LINE = (
    "\x1b[32;20m[2026-01-01 00:00:00,000] LMCache INFO:\x1b[0m [req_id=fake] Retrieved {n} out "
    "of 600 required tokens (from 600 total tokens). size: 0.0100 gb, cost 1.0000 ms, "
    "throughput: 10.0000 GB/s; \x1b[3m(cache_engine.py:700:lmcache.v1.cache_engine)\x1b[0m"
)


def main() -> int:
    argv = sys.argv[1:]
    offload = argv[argv.index("--offload") + 1]
    print(f"INFO starting fake serve {argv}", file=sys.stderr, flush=True)
    if offload == "native":
        print(
            "ValueError: CPU Offloading is currently only supported on CUDA-alike devices",
            file=sys.stderr,
            flush=True,
        )
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    hit = None if offload == "none" else 0.01
    env = {k: os.environ.get(k) for k in LMCACHE_ENV} if offload == "lmcache" else None
    retrieved = os.environ.get("FAKE_LMCACHE_RETRIEVED") if offload == "lmcache" else None
    state = Path(tempfile.mkdtemp(prefix="fake-serve-"))
    try:
        with FakeServer(first_delay=0.05, hit_delay=hit, model=argv[0]) as server:
            # Like `kvpanel serve`: the ready line names the token file, never the token.
            token_file = state / "token"
            token_file.write_text("fake-token-0123456789\n")
            token_file.chmod(0o600)
            ready = {"event": "ready", "url": server.url, "token_file": str(token_file)}
            print(json.dumps(ready), flush=True)
            logged = 0
            while True:
                stopping = stop.wait(0.2)
                if retrieved is not None:
                    for _ in range(logged, len(server.requests)):
                        print(RETRIEVED_LINE.format(n=retrieved), file=sys.stderr, flush=True)
                    logged = len(server.requests)
                status = {
                    "event": "status",
                    "argv": argv,
                    "pid": os.getpid(),
                    "requests": len(server.requests),
                }
                if env is not None:
                    status["env"] = env
                print(json.dumps(status), flush=True)
                if stopping:
                    # Like `kvpanel serve`: after SIGTERM, the flush's outcome, then exit 0.
                    print(json.dumps({"event": "stopped", "flushed": True}), flush=True)
                    break
    finally:
        shutil.rmtree(state, ignore_errors=True)
    time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
