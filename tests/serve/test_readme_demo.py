"""The README's demo, as a new user runs it: `kvpanel serve` on the embedded demo model with the
demo's own defaults, then the README's request block, run by bash exactly as written (only the
port differs), must show CPU-tier hits and the same greedy answer for the repeated document."""

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


def test_readme_demo_requests_hit_the_cpu_tier(tmp_path):
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
        while True:
            status = http("GET", f"{url}/kvpanel/v1/status", token=token)[1]
            if status["tiers"]["cpu"]["hits"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status["tiers"]["cpu"]["hits"] > 0, status["tiers"]
    finally:
        server.stop()
