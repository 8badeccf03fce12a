"""Render the dashboard on the recorded stream to docs/img/dashboard.png.

    python -m tests.panel.screenshot [--theme kvpanel-dark] [--size 160x48]

Needs cairosvg (pip install cairosvg) for the PNG; the SVG is always written.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from .recorded import make_app, prime

ROOT = Path(__file__).resolve().parents[2]


async def render(theme: str, width: int, height: int, out: Path) -> Path:
    app = make_app(theme)
    async with app.run_test(size=(width, height)) as pilot:
        await prime(pilot)
        await pilot.wait_for_scheduled_animations()
        await pilot.pause()
        svg = Path(tempfile.mkdtemp()) / out.with_suffix(".svg").name
        app.save_screenshot(filename=svg.name, path=str(svg.parent))
    return svg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--theme", default="kvpanel-dark")
    parser.add_argument("--size", default="160x48")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img" / "dashboard.png"))
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    svg = asyncio.run(render(args.theme, width, height, out))
    import cairosvg

    cairosvg.svg2png(url=str(svg), write_to=str(out), output_width=1600)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
