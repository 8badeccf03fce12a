"""An attached panel across a real server restart (real vLLM on CPU): while `kvpanel serve` is
down the panel says NO DATA at 80x24 (tiers no longer "ok"); when a new server starts on the
same port and state dir, the panel reconnects by itself, with the token it reads from the state
dir. The vllm tier's capacity is the KV memory vLLM allocated (VLLM_CPU_KVCACHE_SPACE GiB)."""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.serve.conftest import start, tiny_llama  # noqa: F401

pytestmark = pytest.mark.vllm

SMALL = (80, 24)


async def wait_for(pilot: Any, pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.5)


async def test_panel_survives_a_server_restart(tiny_llama, tmp_path) -> None:  # noqa: F811
    from textual.widgets import Label, RichLog

    from kvpanel.panel.app import KvpanelApp
    from kvpanel.panel.backend import HttpBackend
    from kvpanel.panel.connection import ConnectionBanner
    from kvpanel.serve.auth import TOKEN_FILE
    from kvpanel.vllm_ext.control import ControlClient

    server = start(tiny_llama, tmp_path, "--cpu-cache-gb", "0.25", name="first")
    url = server.url
    assert url
    token_file = tmp_path / "state" / TOKEN_FILE
    backend = HttpBackend(url, server.token, token_file=token_file)
    app = KvpanelApp(backend, source=url)
    second = None
    try:
        async with app.run_test(size=SMALL) as pilot:
            await wait_for(pilot, lambda: "vllm" in app.snapshot.get("tiers", {}), 180, "status")
            kv_space = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 4) * (1 << 30)
            capacity = app.snapshot["tiers"]["vllm"]["capacity_bytes"]
            assert 0.9 * kv_space <= capacity <= kv_space, (capacity, kv_space)
            first_uptime = app.snapshot["uptime_s"]

            assert server.stop() == 0
            banner = app.query_one(ConnectionBanner)
            await wait_for(pilot, lambda: banner.display, 60, "the NO DATA banner")
            await pilot.pause(1.5)  # several failed polls: the panel keeps retrying
            assert banner.display and banner.region.height > 0
            assert banner.region.bottom <= SMALL[1]
            assert "NO DATA" in str(banner.render())
            health = str(app.query_one("#tier-cpu .col-health", Label).render())
            assert "stale" in health, health

            port = str(urlsplit(url).port)
            restarted_at = time.monotonic()
            second = start(
                tiny_llama, tmp_path, "--cpu-cache-gb", "0.25", "--port", port, name="second"
            )
            assert second.url == url
            await wait_for(pilot, lambda: not banner.display, 240, "reconnection")
            # The figures now come from the new server (its uptime started at the restart).
            assert app.snapshot["uptime_s"] <= time.monotonic() - restarted_at + 1
            assert first_uptime > 0
            assert app.connection.last_ok_wall is not None
            health = str(app.query_one("#tier-cpu .col-health", Label).render())
            assert "stale" not in health, health
            log = app.query_one(RichLog)

            def log_text() -> str:
                return "\n".join(str(line.text) for line in log.lines)

            # The new server's log is read from its first line, after a marker.
            await wait_for(pilot, lambda: "the server restarted" in log_text(), 20, "the marker")
            await wait_for(
                pilot,
                lambda: "control API token" in log_text().split("restarted")[-1],
                20,
                "the new server's log",
            )
            # The capacity shown is what kvpanel's worker counted in vLLM's KV allocation,
            # reported through the engine's control socket (not the geometry estimate).
            sock = tmp_path / "state" / f"control-{second.proc.pid}.sock"
            reply = ControlClient(str(sock)).call(op="stats")
            assert reply["engine_kv_bytes"] > 0, reply
            await wait_for(pilot, lambda: "vllm" in app.snapshot.get("tiers", {}), 10, "status")
            assert app.snapshot["tiers"]["vllm"]["capacity_bytes"] == reply["engine_kv_bytes"]
    finally:
        backend.close()
        if second is not None:
            assert second.stop() == 0
        elif server.proc.poll() is None:
            server.stop()
