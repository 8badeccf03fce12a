"""Whether the panel's figures are live: the banner that says when they are not.

Polling never stops: every failed poll is retried at the refresh rate, and the first good
snapshot (the same server, or one restarted on the same URL) hides the banner again. While
polls fail, the last figures stay on screen (an operator may want them), so the banner has to
say, at every terminal size, that they are old: it sits above the dashboard, in the error
colour, and names the last good update and the error.
"""

from __future__ import annotations

import time

from textual.content import Content
from textual.widgets import Static


class ConnectionState:
    """Failed-poll bookkeeping (monotonic for how long, wall time for the last good update)."""

    def __init__(self) -> None:
        self._clock = time
        self.error: str | None = None
        self.failing_since: float | None = None  # monotonic time of the first failed poll
        self.last_ok_wall: float | None = None  # wall time of the last good snapshot
        self.failed_polls = 0

    @property
    def lost(self) -> bool:
        return self.error is not None

    def ok(self) -> bool:
        """A good snapshot arrived; True when it ends a loss (the panel reconnected)."""
        was_lost = self.lost
        self.error, self.failing_since, self.failed_polls = None, None, 0
        self.last_ok_wall = self._clock.time()
        return was_lost

    def failed(self, error: str) -> None:
        if self.failing_since is None:
            self.failing_since = self._clock.monotonic()
        self.error = error
        self.failed_polls += 1

    def banner(self) -> Content:
        """One line at 160 columns, two at 80; the URL is in the header (and in most errors)."""
        seconds = 0 if self.failing_since is None else self._clock.monotonic() - self.failing_since
        shown = (
            "stale figures from " + time.strftime("%H:%M:%S", time.localtime(self.last_ok_wall))
            if self.last_ok_wall is not None
            else "no figures received yet"
        )
        return Content.from_markup(
            "[b]✗ NO DATA for $secs s[/] · $error · $shown · retrying",
            secs=f"{seconds:.0f}",
            error=self.error or "",
            shown=shown,
        )


class ConnectionBanner(Static):
    """Hidden while the panel is live; otherwise one or two lines in the error colour."""

    DEFAULT_CSS = """
    ConnectionBanner {
        display: none; height: auto; width: 100%;
        background: $error; color: $text; padding: 0 1;
    }
    ConnectionBanner.-lost { display: block; }
    """

    def show_state(self, state: ConnectionState) -> None:
        if state.lost:
            self.update(state.banner())
        self.set_class(state.lost, "-lost")
