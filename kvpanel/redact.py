"""Printable forms of values that carry secrets (imports nothing heavy).

Status lines, logs, the control API, the panel and benchmark results are read by people and
collected by log systems: a Redis password or a token must never reach them.

    display_url(url)   - the URL without user name, password and query (may carry tokens)
    redact_argv(argv)  - a command line with secret-carrying flag values hidden
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
# Flags of `kvpanel serve` / `kvpanel bench` whose value is a secret, or a URL that may hold one.
# --kv-transfer-config: its JSON may carry a remote_url with a password.
SECRET_FLAGS = frozenset(
    {"--token", "--api-key", "--cache-secret", "--hf-token", "--kv-transfer-config"}
)
URL_FLAGS = frozenset({"--remote-url"})


def display_url(url: str) -> str:
    """``scheme://host[:port][/path]``: what identifies the server, nothing that authenticates."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:  # unparsable (e.g. a bad port): show only that it was given
        return HIDDEN
    if not parts.scheme or not host:
        return HIDDEN if "@" in url or "?" in url else url
    host = f"[{host}]" if ":" in host else host
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values of SECRET_FLAGS hidden and URL_FLAGS in display form."""
    out: list[str] = []
    hide_next: str | None = None
    for arg in argv:
        if hide_next is not None:
            out.append(display_url(arg) if hide_next in URL_FLAGS else HIDDEN)
            hide_next = None
            continue
        flag, eq, value = arg.partition("=")
        if flag in SECRET_FLAGS | URL_FLAGS:
            if eq:
                out.append(f"{flag}={display_url(value) if flag in URL_FLAGS else HIDDEN}")
            else:
                out.append(arg)
                hide_next = flag
            continue
        out.append(arg)
    return out
