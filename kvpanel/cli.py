"""The ``kvpanel`` command: serve, attach, status, bench. Each imports only what it needs."""

from __future__ import annotations

import sys

USAGE = """usage: kvpanel <command> [args]

commands:
  serve [MODEL] [flags]      vLLM + OpenAI API with kvpanel's KV tiers (default: demo model)
  attach URL --token T       the panel for a running `kvpanel serve --no-ui`
  status URL --token T       one status snapshot (--json) for scripts
  bench long-doc-qa [flags]  LMCache's long-document QA benchmark

`kvpanel <command> --help` for details; `kvpanel --version` for the version.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from kvpanel import __version__

        print(f"kvpanel {__version__}")
        return 0
    cmd, rest = args[0], args[1:]
    if cmd == "serve":
        from kvpanel.serve.main import serve_main

        return serve_main(rest)
    if cmd == "attach":
        from kvpanel.panel.cli import attach_main

        return int(attach_main(rest) or 0)
    if cmd == "status":
        from kvpanel.panel.cli import status_main

        return int(status_main(rest) or 0)
    if cmd == "bench":
        from kvpanel.bench.cli import bench_main

        return bench_main(rest)
    print(f"kvpanel: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
