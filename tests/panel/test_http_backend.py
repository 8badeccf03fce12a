"""HttpBackend and the CLI against a tiny local control API (http.server in a thread)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kvpanel.panel.backend import BackendError, HttpBackend, PanelBackend
from kvpanel.panel.cli import status_main

from .recorded import load_stream

TOKEN = "s3cret"


class FakeControlAPI(BaseHTTPRequestHandler):
    snapshot: dict[str, Any] = {}
    bench: dict[str, Any] | None = None
    logs = ["line one", "line two", "line three"]

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._reply(401, {"error": "unauthorized"})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        path, _, query = self.path.partition("?")
        if path == "/kvpanel/v1/status":
            self._reply(200, self.snapshot)
        elif path == "/kvpanel/v1/bench":
            self._reply(200, {"bench": type(self).bench})
        elif path == "/kvpanel/v1/logs":
            since = int(query.split("=")[1]) if query.startswith("since=") else 0
            self._reply(200, {"lines": self.logs[since:], "next": len(self.logs)})
        else:
            self._reply(404, {"error": f"no route {path}"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        parts = self.path.strip("/").split("/")  # kvpanel v1 tiers cpu resize
        if parts[2:3] == ["tiers"] and len(parts) == 5:
            tier, op = parts[3], parts[4]
            tiers = self.snapshot["tiers"]
            if tier not in tiers:
                return self._reply(400, {"error": f"unknown tier '{tier}'"})
            if op == "resize":
                size = body.get("capacity_bytes")
                if not isinstance(size, int) or size < 0:
                    return self._reply(400, {"error": "capacity_bytes must be >= 0"})
                tiers[tier]["capacity_bytes"] = size
            elif op == "clear":
                tiers[tier]["used_bytes"] = 0
            return self._reply(200, {"ok": True, "tiers": tiers})
        if parts[2:] == ["bench"]:
            if type(self).bench and type(self).bench["state"] == "running":
                return self._reply(409, {"error": "a benchmark is already running"})
            type(self).bench = {
                "state": "running",
                "progress": 0.0,
                "phase": "warmup",
                "result": None,
                "error": None,
            }
            return self._reply(200, {"ok": True, "bench": type(self).bench})
        self._reply(404, {"error": "no route"})


@pytest.fixture()
def server() -> Iterator[str]:
    FakeControlAPI.snapshot = load_stream()["snapshots"][0]
    FakeControlAPI.bench = None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeControlAPI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_snapshot_and_actions(server: str) -> None:
    backend = HttpBackend(server, TOKEN)
    assert isinstance(backend, PanelBackend)
    snap = backend.snapshot()
    assert snap["schema"] == 1 and "cpu" in snap["tiers"]
    reply = backend.resize("cpu", 1 << 30)
    assert reply["ok"] and reply["tiers"]["cpu"]["capacity_bytes"] == 1 << 30
    assert backend.clear("disk")["tiers"]["disk"]["used_bytes"] == 0
    assert backend.logs(0) == (["line one", "line two", "line three"], 3)
    assert backend.logs(2) == (["line three"], 3)
    assert backend.bench_status() is None
    assert backend.start_bench({"num_documents": 2})["bench"]["state"] == "running"
    assert backend.bench_status()["state"] == "running"  # type: ignore[index]
    with pytest.raises(BackendError, match="already running"):
        backend.start_bench({})
    backend.close()


@pytest.mark.parametrize("token", [None, "wrong"])
def test_unauthorized(server: str, token: str | None) -> None:
    with pytest.raises(BackendError, match="^unauthorized: wrong or missing token$"):
        HttpBackend(server, token).snapshot()


def test_bad_value_carries_server_message(server: str) -> None:
    backend = HttpBackend(server, TOKEN)
    with pytest.raises(BackendError, match="^capacity_bytes must be >= 0$"):
        backend.resize("cpu", -5)
    with pytest.raises(BackendError, match="unknown tier 'nvram'"):
        backend.clear("nvram")


def test_connection_refused() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match=f"^cannot reach http://127.0.0.1:{port}"):
        HttpBackend(f"http://127.0.0.1:{port}", TOKEN, timeout=2).snapshot()


def test_status_cli(
    server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert status_main([server, "--token", TOKEN, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == "Qwen/Qwen3-8B"
    monkeypatch.setenv("KVPANEL_TOKEN", TOKEN)
    assert status_main([server]) == 0
    assert "cpu" in capsys.readouterr().out
    monkeypatch.delenv("KVPANEL_TOKEN")
    assert status_main([server, "--token", "nope", "--json"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "kvpanel status: unauthorized: wrong or missing token"


def test_status_cli_reads_the_local_token_file(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvpanel.serve.auth import ensure_token

    monkeypatch.delenv("KVPANEL_TOKEN", raising=False)
    state = tmp_path / "state"
    assert status_main([server, "--state-dir", str(state)]) == 2
    assert "token" in capsys.readouterr().err and not state.exists()  # nothing created
    ensure_token(state, TOKEN)  # what `kvpanel serve --state-dir state --token ...` leaves
    assert status_main([server, "--state-dir", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == "Qwen/Qwen3-8B"
    # This machine's token is never sent to another host.
    assert status_main(["http://10.255.255.1:9", "--state-dir", str(state)]) == 2
    assert "use --token" in capsys.readouterr().err
    # An unsafe token file is refused, not followed.
    (state / "token").unlink()
    (state / "token").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text(TOKEN)
    assert status_main([server, "--state-dir", str(state)]) == 2
    assert "symlink" in capsys.readouterr().err


async def test_panel_over_http(server: str) -> None:
    from kvpanel.panel.app import KvpanelApp

    app = KvpanelApp(HttpBackend(server, TOKEN), autopoll=False)
    async with app.run_test(size=(120, 40)) as pilot:
        app.poll_now()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.snapshot["model"]["name"] == "Qwen/Qwen3-8B"
        assert app.log_next == 3


def test_status_cli_url_without_scheme_means_http(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = server.removeprefix("http://")
    assert status_main([bare, "--token", TOKEN, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == "Qwen/Qwen3-8B"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8000", "http://", "127.0.0.1:port"])
def test_status_cli_refuses_a_non_http_url_in_one_line(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert status_main([url, "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvpanel status: not ") and err.count("\n") == 1, err


def test_status_json_into_a_closed_pipe_prints_no_traceback(server: str) -> None:
    """`kvpanel status URL --json | head -1`: the reader leaves before the snapshot is written."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kvpanel.cli", "status", server, "--token", TOKEN, "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.stderr == "" and proc.returncode == 0
