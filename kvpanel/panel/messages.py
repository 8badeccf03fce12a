"""Messages the panel's thread workers post to the UI thread (the UI only renders these)."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class SnapshotReady(Message):
    def __init__(self, snapshot: dict[str, Any]) -> None:
        super().__init__()
        self.snapshot = snapshot


class LogsReady(Message):
    def __init__(self, lines: list[str], next_index: int) -> None:
        super().__init__()
        self.lines, self.next_index = lines, next_index


class BenchReady(Message):
    def __init__(self, bench: dict[str, Any] | None) -> None:
        super().__init__()
        self.bench = bench


class TiersChanged(Message):
    """A resize/clear succeeded; `tiers` is the server's fresh view of them."""

    def __init__(self, text: str, tiers: dict[str, Any]) -> None:
        super().__init__()
        self.text, self.tiers = text, tiers


class ActionFailed(Message):
    def __init__(self, text: str, from_poll: bool = False) -> None:
        super().__init__()
        self.text, self.from_poll = text, from_poll


class PollDone(Message):
    pass
