"""A stand-in for ``kvpanel serve``: JSON lines on stdout, logs on stderr, exit 0 on SIGTERM.

``--offload native`` fails like vLLM's CPU platform does; everything else serves FakeServer.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.fake_server import FakeServer  # noqa: E402


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
    with FakeServer(first_delay=0.05, hit_delay=hit, model=argv[0]) as server:
        print(json.dumps({"event": "ready", "url": server.url, "token": "tok"}), flush=True)
        while not stop.wait(0.2):
            status = {"event": "status", "argv": argv, "requests": len(server.requests)}
            print(json.dumps(status), flush=True)
        status = {"event": "status", "argv": argv, "requests": len(server.requests)}
        print(json.dumps(status), flush=True)
    time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main())
