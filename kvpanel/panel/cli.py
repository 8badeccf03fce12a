"""Entry points: `kvpanel attach URL`, `kvpanel status URL --json`, and run_panel() for
`kvpanel serve`'s local UI. Textual is imported only when a panel is actually run."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kvpanel.panel.backend import BackendError, HttpBackend, PanelBackend

if TYPE_CHECKING:
    from kvpanel.panel.app import KvpanelApp


def run_panel(
    backend: PanelBackend,
    *,
    refresh_hz: float = 2.0,
    theme: str | None = None,
    title: str = "kvpanel",
    source: str = "",
) -> int:
    """Run the panel in this terminal until the user quits or the terminal goes away."""
    from kvpanel.panel.app import KvpanelApp

    app: KvpanelApp = KvpanelApp(
        backend,
        refresh_hz=refresh_hz,
        theme=theme,
        title=title,
        source=source,
        handle_sighup=True,
    )
    app.run()
    return int(app.return_code or 0)


def control_url(text: str) -> str:
    """The URL argument made whole: `host:port` means http://host:port (what `kvpanel serve`
    listens on); ValueError for anything but an http(s) URL with a host."""
    url = text.strip()
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"not a URL: {text!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"not an http(s) URL: {text!r} (e.g. http://127.0.0.1:8000 or 127.0.0.1:8000)"
        )
    return url


def _write_stdout(text: str) -> int:
    """Print text; a reader that went away (`| head -1`) is not an error worth a traceback."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null, or the interpreter's final flush raises the same error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        help="control API base URL, e.g. http://127.0.0.1:8000 (host:port means http://)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("KVPANEL_TOKEN"),
        help="bearer token of the control API (default: $KVPANEL_TOKEN, else the token file "
        "of a server on this machine)",
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        help="the server's --state-dir, whose token file is read for a server on this machine "
        "(default ~/.local/state/kvpanel)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="HTTP timeout in seconds (default 5)"
    )


def _is_local(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(args: argparse.Namespace, prog: str) -> str | None:
    """--token / $KVPANEL_TOKEN, else the local server's token file. Only for a loopback URL:
    this machine's token must not be sent to another host. Raises SystemExit(2) on trouble."""
    try:
        args.url = control_url(args.url)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.token:
        return str(args.token)
    from kvpanel.serve.auth import TOKEN_FILE, read_token_file
    from kvpanel.settings import ConfigError, default_state_dir

    path = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()
    path = path / TOKEN_FILE
    if not _is_local(args.url):
        print(
            f"{prog}: no token for {args.url} (use --token or set KVPANEL_TOKEN)", file=sys.stderr
        )
        raise SystemExit(2)
    try:
        token = read_token_file(path)
        args.token_file = path  # read again when the server answers 401 (a new token)
    except (ConfigError, OSError) as e:
        print(f"{prog}: cannot read the token file: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if token is None:
        print(
            f"{prog}: no token: {path} does not exist (use --token or --state-dir)", file=sys.stderr
        )
        raise SystemExit(2)
    return token


def attach_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvpanel attach", description="Open the control panel of a running kvpanel serve."
    )
    _add_common(parser)
    parser.add_argument(
        "--theme",
        default=None,
        help="panel theme: kvpanel-dark (default), kvpanel-light, or a theme file's name",
    )
    parser.add_argument(
        "--refresh-hz", type=float, default=2.0, help="updates per second (default 2)"
    )
    args = parser.parse_args(argv)
    try:
        token = resolve_token(args, "kvpanel attach")
    except SystemExit as e:
        return int(e.code or 2)
    backend = HttpBackend(
        args.url, token, timeout=args.timeout, token_file=getattr(args, "token_file", None)
    )
    try:
        backend.snapshot()  # fail fast, before taking over the terminal
    except BackendError as e:
        print(f"kvpanel attach: {e}", file=sys.stderr)
        return 1
    try:
        return run_panel(backend, refresh_hz=args.refresh_hz, theme=args.theme, source=backend.url)
    finally:
        backend.close()


def status_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvpanel status", description="Print one status snapshot of a running kvpanel serve."
    )
    _add_common(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the whole snapshot as JSON (default: a few lines for humans)",
    )
    args = parser.parse_args(argv)
    try:
        token = resolve_token(args, "kvpanel status")
    except SystemExit as e:
        return int(e.code or 2)
    backend = HttpBackend(args.url, token, timeout=args.timeout)
    try:
        snap = backend.snapshot()
    except BackendError as e:
        print(f"kvpanel status: {e}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    return _write_stdout(json.dumps(snap, indent=2, sort_keys=True) if args.json else summary(snap))


def summary(snap: dict[str, Any]) -> str:
    """A few plain lines for humans (`kvpanel status` without --json)."""
    from kvpanel.panel.fmt import fmt_pair, fmt_pct, fmt_seconds, ordered_tiers

    model = snap.get("model", {})
    demo = " (DEMO MODEL)" if model.get("demo") else ""
    ttft = snap.get("ttft_s", {})
    lines = [
        f"model   {model.get('name', '?')}{demo} · {model.get('engine', '?')}",
        f"ttft    p50 {fmt_seconds(ttft.get('p50'))}  p90 {fmt_seconds(ttft.get('p90'))}"
        f"  p99 {fmt_seconds(ttft.get('p99'))}",
    ]
    tiers = snap.get("tiers", {})
    for name in ordered_tiers(tiers):
        t = tiers[name]
        used, cap = int(t.get("used_bytes", 0)), int(t.get("capacity_bytes", 0))
        health = "ok" if t.get("healthy", True) else f"UNHEALTHY {t.get('note', '')}"
        lines.append(
            f"{name:<7} {fmt_pair(used, cap):>16}  {t.get('chunks', 0):>7} chunks  "
            f"hit {fmt_pct(t.get('hit_rate')):>4}  {health}"
        )
    return "\n".join(lines)
