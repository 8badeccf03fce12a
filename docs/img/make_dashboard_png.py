"""Render docs/img/dashboard.png from a REAL `kvpanel serve --no-ui` on the demo model.

Starts the server on the demo's own defaults (as ./scripts/demo.sh does), sends the README's
requests (four different 3,000-token documents, then the first again; twice, so the CPU tier
serves hits while the panel polls), drives `kvpanel attach`'s app against it and saves a
screenshot. Every number in the picture is what that server reported. Needs cairosvg.

    python docs/img/make_dashboard_png.py [--size 140x40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def complete(url: str, doc: int) -> None:
    """One of the README's demo requests, as its curl sends it."""
    prompt = f"{doc} " + "hi " * 3000
    body = json.dumps({"prompt": prompt, "max_tokens": 8, "temperature": 0}).encode()
    req = urllib.request.Request(
        f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=300).read()


async def shoot(url: str, token: str, size: tuple[int, int], svg: Path, work) -> None:
    from kvpanel.panel.app import KvpanelApp
    from kvpanel.panel.backend import HttpBackend

    app = KvpanelApp(HttpBackend(url, token), title="kvpanel serve", source=url)
    async with app.run_test(size=size) as pilot:
        await pilot.pause(1.5)
        await asyncio.to_thread(work)  # traffic while the panel polls: hit rates are "now"
        await pilot.pause(1.0)
        app.save_screenshot(filename=svg.name, path=str(svg.parent))


def main() -> None:
    from kvpanel.bench.server_proc import ServeProcess

    p = argparse.ArgumentParser()
    p.add_argument("--size", default="140x40")
    args = p.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp())
    argv = [
        sys.executable,
        "-m",
        "kvpanel.cli",
        "serve",
        "--no-ui",
        "--port",
        "0",
        "--status-interval",
        "1",
        "--state-dir",
        str(tmp / "state"),
    ]
    server = ServeProcess.start(argv, ready_timeout_s=600, log_path=tmp / "serve.log")
    try:
        assert server.url and server.token

        def work() -> None:
            for doc in (1, 2, 3, 4, 1, 2, 3, 4, 1):  # the README's loop, then once more
                complete(server.url, doc)
                time.sleep(0.3)

        svg = tmp / "dashboard.svg"
        asyncio.run(shoot(server.url, server.token, size, svg, work))
        import cairosvg

        out = ROOT / "docs" / "img" / "dashboard.png"
        cairosvg.svg2png(url=str(svg), write_to=str(out), output_width=1600)
        print(f"wrote {out}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
