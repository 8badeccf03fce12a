"""The panel and `kvpanel status` against a real `kvpanel serve --no-ui` (real vLLM on CPU).

One server for the module: a token-id prompt is sent twice (the second finds its chunks in the
CPU tier; the engine runs without vLLM's prefix cache, so every hit is kvpanel's), then

- the Textual app with an HttpBackend is driven under ``run_test()`` and must *display* a
  non-zero CPU-tier hit rate,
- ``kvpanel status URL --token T --json`` must print a snapshot with ``tiers.cpu.hits > 0``,
- a wrong token must exit non-zero with one line on stderr.

A snapshot's hit rate covers the interval since the previous snapshot (and the server's own
status lines also build snapshots), so a burst of requests before the panel starts could land in
an interval the panel never sees. The panel test therefore keeps sending the repeated prompt
while the panel polls, until the CPU row shows a hit rate above 0 (or a deadline passes).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.serve.conftest import complete, start, tiny_llama, wait_status  # noqa: F401

pytestmark = pytest.mark.vllm

SIZE = (120, 40)
DEADLINE_S = 90.0


def prompt(seed: int, n: int = 600) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 30000) for _ in range(n)]


@pytest.fixture(scope="module")
def served(tiny_llama, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("attach")
    server = start(tiny_llama, tmp, "--cpu-cache-gb", "0.25", name="attach-serve")
    try:
        p = prompt(7)
        complete(server.url, tiny_llama, p)
        complete(server.url, tiny_llama, p)  # its chunks now come from the CPU tier
        wait_status(server, lambda s: s["tiers"]["cpu"]["hits"] >= 1, timeout=60)
        yield server, tiny_llama
    finally:
        rc = server.stop()
        assert rc == 0, f"kvpanel serve exited with {rc}"


def _peak(history: Any) -> float:
    """Highest hit rate in a tier's history; intervals without lookups are None."""
    return max((h for h in history if h is not None), default=0.0)


def _label_text(app: Any, selector: str) -> str:
    from textual.widgets import Label

    return str(app.query_one(selector, Label).render())


async def test_attached_panel_shows_cpu_tier_hits(served) -> None:
    from kvpanel.panel.app import KvpanelApp
    from kvpanel.panel.backend import HttpBackend

    server, model = served
    backend = HttpBackend(server.url, server.token)
    app = KvpanelApp(backend, source=server.url)
    p = prompt(7)
    shown: list[str] = []
    try:
        async with app.run_test(size=SIZE) as pilot:
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                # Requests land between two panel polls (2/s); each repeat hits the CPU tier.
                await asyncio.to_thread(complete, server.url, model, p, 1)
                await pilot.pause(0.3)
                hit_text = _label_text(app, "#tier-cpu .col-hit")
                shown.append(hit_text)
                if hit_text not in ("-", "0%") and _peak(app.hit_history.get("cpu", [])) > 0:
                    break
            await app.workers.wait_for_complete()
            await pilot.pause()
            assert app.last_error is None, app.last_error
            hist = list(app.hit_history.get("cpu", []))
            assert hist and _peak(hist) > 0, (hist, shown[-10:])
            assert any(t not in ("-", "0%") for t in shown), shown[-10:]
            assert app.snapshot["tiers"]["cpu"]["hits"] > 0
            # What the rest of the row and the panels show comes from the same server.
            assert int(app.snapshot["tiers"]["cpu"]["chunks"]) >= 2
            # A local model directory shows by its last part (the path is the tooltip).
            assert model.rstrip("/").rsplit("/", 1)[-1] in _label_text(app, "#engine-model")
            assert app.query_one("#engine-model").tooltip == model
            assert server.url in app.sub_title
    finally:
        backend.close()


def _status(url: str, token: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kvpanel.cli", "status", url, "--token", token, "--json"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_status_cli_json_and_wrong_token(served) -> None:
    server, _ = served
    proc = _status(server.url, server.token)
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    assert snap["tiers"]["cpu"]["hits"] > 0, snap["tiers"]["cpu"]
    assert snap["tiers"]["cpu"]["chunks"] >= 2

    bad = _status(server.url, "not-the-token")
    assert bad.returncode != 0
    assert bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "unauthorized" in lines[0], bad.stderr
