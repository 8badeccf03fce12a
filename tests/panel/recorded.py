"""Shared helpers: the recorded stream fixture and a deterministic dashboard app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvpanel.panel.backend import RecordedBackend

FIXTURE = Path(__file__).with_name("recorded_stream.json")


def load_stream() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def recorded_backend() -> RecordedBackend:
    data = load_stream()
    return RecordedBackend(data["snapshots"], log_lines=data["logs"])


def make_app(theme: str = "kvpanel-dark", autopoll: bool = False, **kwargs: Any) -> Any:
    """An app on the recorded stream. autopoll=False: nothing changes unless the test says so."""
    from kvpanel.panel.app import KvpanelApp

    kwargs.setdefault("theme_dir", Path("/nonexistent"))
    return KvpanelApp(
        recorded_backend(),
        theme=theme,
        autopoll=autopoll,
        source="http://127.0.0.1:8000",
        **kwargs,
    )


async def prime(pilot: Any, snapshots: int = 40) -> None:
    """Feed `snapshots` recorded snapshots and all log lines synchronously (no workers)."""
    from kvpanel.panel.app import LogsReady

    app = pilot.app
    backend = app.backend
    for _ in range(snapshots):
        await app.ingest(backend.snapshot())
    await pilot.pause()
    lines, nxt = backend.logs(0)
    app.on_logs_ready(LogsReady(lines, nxt))
    await pilot.pause()
