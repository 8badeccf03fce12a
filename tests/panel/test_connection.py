"""A panel whose server stops answering must say so at every size (80x24 included), keep
retrying and come back by itself; an HttpBackend re-reads the local token file on a 401."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Label

from kvpanel.panel.backend import BackendError, HttpBackend
from kvpanel.panel.connection import ConnectionBanner

from .recorded import RecordedBackend, load_stream, make_app, prime

REFUSED = "cannot reach http://127.0.0.1:8000: [Errno 111] Connection refused"


class FlakyBackend(RecordedBackend):
    """The recorded stream, until ``down`` is set: then every call fails as a dead server's."""

    down = False

    def snapshot(self) -> dict[str, Any]:
        if self.down:
            raise BackendError(REFUSED)
        return super().snapshot()

    def logs(self, since: int) -> tuple[list[str], int]:
        if self.down:
            raise BackendError(REFUSED)
        return super().logs(since)


async def poll(pilot: Any) -> None:
    pilot.app.poll_now()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


def on_screen(widget: Any, size: tuple[int, int]) -> bool:
    r = widget.region
    return r.width > 0 and r.height > 0 and r.x >= 0 and r.y >= 0 and r.bottom <= size[1]


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
async def test_lost_server_is_unmistakable_and_panel_reconnects(size: tuple[int, int]) -> None:
    data = load_stream()
    backend = FlakyBackend(data["snapshots"], log_lines=data["logs"])
    app = make_app()
    app.backend = backend
    async with app.run_test(size=size) as pilot:
        await prime(pilot, 3)
        await poll(pilot)
        banner = app.query_one(ConnectionBanner)
        assert not banner.display
        backend.down = True
        await poll(pilot)
        await poll(pilot)  # still failing: still shown, still retrying
        assert banner.display and on_screen(banner, size), banner.region
        text = str(banner.render())
        assert "NO DATA" in text and "Connection refused" in text and "retrying" in text, text
        for tier in ("vllm", "cpu", "disk", "remote"):
            health = str(app.query_one(f"#tier-{tier} .col-health", Label).render())
            assert "stale" in health, (tier, health)  # not the last "ok"
        assert app.query_one("#tiers").has_class("-stale")
        calls = backend.snapshot_calls
        backend.down = False
        await poll(pilot)
        assert backend.snapshot_calls == calls + 1
        assert not banner.display
        health = str(app.query_one("#tier-cpu .col-health", Label).render())
        assert "stale" not in health and "ok" in health, health
        assert not app.query_one("#tiers").has_class("-stale")


class TokenAPI(BaseHTTPRequestHandler):
    token = "first"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        ok = self.headers.get("Authorization") == f"Bearer {type(self).token}"
        body = json.dumps({"tiers": {}} if ok else {"error": "unauthorized"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def token_server() -> Iterator[str]:
    TokenAPI.token = "first"
    server = ThreadingHTTPServer(("127.0.0.1", 0), TokenAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_backend_rereads_token_file_after_401(token_server: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    token_file.chmod(0o600)
    from_file = HttpBackend(token_server, "first", token_file=token_file)
    given = HttpBackend(token_server, "first")  # --token: never replaced behind the user's back
    try:
        assert from_file.snapshot() == {"tiers": {}}
        TokenAPI.token = "second"  # the server restarted with a new token in its state dir
        token_file.write_text("second\n")
        assert from_file.snapshot() == {"tiers": {}}
        with pytest.raises(BackendError, match="unauthorized"):
            given.snapshot()
    finally:
        from_file.close()
        given.close()


@pytest.mark.parametrize(
    "new_server",
    [
        pytest.param({"uptime_s": 2.0, "server_id": None}, id="uptime-went-back"),
        # A slow restart: the new server has already run longer than the old one had when last
        # seen. Only its server_id tells it apart (CI once timed out waiting for the marker).
        pytest.param({"uptime_s": 1e6, "server_id": "a-new-process"}, id="new-server-id"),
    ],
)
async def test_log_of_a_restarted_server_is_read_from_its_first_line(new_server) -> None:
    from textual.widgets import RichLog

    from kvpanel.panel.messages import LogsReady

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await prime(pilot, 3)  # the old server's log: read up to its end
        assert app.log_next > 3
        old_next = app.log_next
        restarted = {**app.snapshot, **new_server}  # the same URL, a new server
        await app.ingest(restarted)
        new_log = [f"new server line {i}" for i in range(old_next + 5)]
        # The poll that saw the new server asked for its log from the old position.
        app.on_logs_ready(LogsReady(new_log[old_next:], len(new_log)))
        await pilot.pause()
        assert app.log_next == 0  # the next poll reads the new log from line 0
        app.on_logs_ready(LogsReady(new_log, len(new_log)))
        await pilot.pause()
        text = "\n".join(str(line.text) for line in app.query_one(RichLog).lines)
        assert "the server restarted" in text
        assert "new server line 0" in text and f"new server line {old_next + 4}" in text
