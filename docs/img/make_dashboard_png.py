"""Render docs/img/dashboard.png from a REAL `kvpanel serve --no-ui` on the demo model.

Starts the server, sends a few long prompts (each twice, so the CPU tier serves hits), then
drives `kvpanel attach`'s app against it and saves a screenshot. Every number in the picture
is what that server reported. Needs cairosvg for the PNG.

    python docs/img/make_dashboard_png.py [--size 140x40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def complete(url: str, model: str, prompt: list[int]) -> None:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 16}).encode()
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
    from kvpanel.demo.tiny_models import demo_model_dir

    p = argparse.ArgumentParser()
    p.add_argument("--size", default="140x40")
    args = p.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp())
    model = str(demo_model_dir())
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
        "--disk-path",
        str(tmp / "disk"),
        "--disk-cache-gb",
        "1",
        "--no-enable-prefix-caching",
    ]
    server = ServeProcess.start(argv, ready_timeout_s=600, log_path=tmp / "serve.log")
    try:
        assert server.url and server.token
        rng = random.Random(0)
        prompts = [[rng.randrange(10, 30000) for _ in range(900)] for _ in range(4)]

        def work() -> None:
            for _ in range(3):
                for q in prompts:
                    complete(server.url, model, q)
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
