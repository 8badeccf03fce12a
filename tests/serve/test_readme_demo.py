"""The README's demo, as a new user runs it: `kvpanel serve` on the embedded demo model with the
demo's own defaults, then the README's request block, run by bash exactly as written (only the
port differs), must show CPU-tier hits and the same greedy answer for the repeated document; the
panel's benchmark with its default parameters then hits the CPU tier in its query round."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from kvpanel.panel.backend import BENCH_DEFAULTS

from .conftest import http, start

pytestmark = pytest.mark.vllm

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- demo-requests:"


def readme_demo_requests() -> str:
    """The bash block that follows the demo-requests marker in README.md."""
    text = README.read_text()
    assert MARKER in text, f"README.md lost its {MARKER!r} marker"
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block, "no bash block after the demo-requests marker"
    return block.group(1)


def cpu_hits(url: str, token: str) -> int:
    return int(http("GET", f"{url}/kvpanel/v1/status", token=token)[1]["tiers"]["cpu"]["hits"])


def test_readme_demo_requests_and_panel_bench_hit_the_cpu_tier(tmp_path):
    script = readme_demo_requests()
    assert "localhost:8000" in script
    assert shutil.which("curl"), "the README's demo requests use curl"
    # The demo model is written under KVPANEL_HOME, not the user's ~/.cache.
    env = dict(os.environ, KVPANEL_HOME=str(tmp_path / "home"))
    server = start(
        None,
        tmp_path,
        "--disk-path",
        str(tmp_path / "disk"),
        "--disk-cache-gb",
        "1",
        env=env,
    )
    try:
        url, token = server.url, server.token
        assert url and token
        run = subprocess.run(
            ["bash", "-c", script.replace("localhost:8000", urlparse(url).netloc)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr
        answers = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        texts = [a["choices"][0]["text"] for a in answers]
        assert len(texts) == 5 and all(t.strip() for t in texts), answers
        assert texts[-1] == texts[0]  # greedy: the repeat's KV (from the CPU tier) is right

        deadline = time.monotonic() + 30
        while cpu_hits(url, token) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cpu_hits(url, token) > 0

        # The panel's benchmark, as its dialog starts it: the query round re-sends documents
        # the demo engine's KV cache has long lost, so they come back from the CPU tier.
        code, body = http("POST", f"{url}/kvpanel/v1/bench", dict(BENCH_DEFAULTS), token=token)
        assert code == 200, body
        at_query_start = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            bench = http("GET", f"{url}/kvpanel/v1/bench", token=token)[1]["bench"]
            if at_query_start is None and bench["phase"].startswith("query"):
                at_query_start = cpu_hits(url, token)
            if bench["state"] != "running":
                break
            time.sleep(0.2)
        assert bench["state"] == "done", bench
        assert at_query_start is not None, bench
        time.sleep(2)  # the status interval: the last query requests' hits are counted
        assert cpu_hits(url, token) > at_query_start
    finally:
        server.stop()
