"""Entry points: `kvpanel attach URL`, `kvpanel status URL --json`, and run_panel() for
`kvpanel serve`'s local UI. Textual is imported only when a panel is actually run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

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


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="control API base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--token",
        default=os.environ.get("KVPANEL_TOKEN"),
        help="bearer token of the control API (default: $KVPANEL_TOKEN)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="HTTP timeout in seconds")


def attach_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvpanel attach", description="Open the control panel of a running kvpanel serve."
    )
    _add_common(parser)
    parser.add_argument("--theme", default=None, help="kvpanel-dark (default), kvpanel-light, ...")
    parser.add_argument("--refresh-hz", type=float, default=2.0, help="updates per second (2-4)")
    args = parser.parse_args(argv)
    if not args.token:
        print("kvpanel attach: no token (use --token or set KVPANEL_TOKEN)", file=sys.stderr)
        return 2
    backend = HttpBackend(args.url, args.token, timeout=args.timeout)
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
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    args = parser.parse_args(argv)
    backend = HttpBackend(args.url, args.token, timeout=args.timeout)
    try:
        snap = backend.snapshot()
    except BackendError as e:
        print(f"kvpanel status: {e}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    if args.json:
        print(json.dumps(snap, indent=2, sort_keys=True))
    else:
        print(summary(snap))
    return 0


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
