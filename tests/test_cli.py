"""The top-level `kvpanel` command."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import pytest

import kvpanel
from kvpanel.cli import main


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([flag]) == 0
    assert capsys.readouterr().out == f"kvpanel {kvpanel.__version__}\n"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser of the kvpanel command, as each subcommand builds it."""
    from kvpanel.bench.cli import build_parser as bench_parser
    from kvpanel.panel import cli as panel_cli
    from kvpanel.serve.options import build_parser as serve_parser

    built: dict[str, argparse.ArgumentParser] = {}

    def capture(name: str, main: Any) -> None:
        original = argparse.ArgumentParser.parse_args

        def grab(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
            built[name] = self
            raise SystemExit(0)

        argparse.ArgumentParser.parse_args = grab  # type: ignore[method-assign]
        try:
            with contextlib.suppress(SystemExit):
                main(["http://127.0.0.1:1"])
        finally:
            argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]

    capture("attach", panel_cli.attach_main)
    capture("status", panel_cli.status_main)
    return {"serve": serve_parser(), "bench": bench_parser(), **built}


@pytest.mark.parametrize("command", ["serve", "attach", "status", "bench"])
def test_every_flag_has_help(command: str) -> None:
    parser = _parsers()[command]
    bare = [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if not (a.help and a.help.strip()) and a.help != argparse.SUPPRESS
    ]
    assert not bare, f"kvpanel {command}: flags without help: {bare}"


@pytest.mark.parametrize("command", ["serve", "attach", "status", "bench"])
def test_help_states_every_default(command: str) -> None:
    parser = _parsers()[command]
    formatter = parser._get_formatter()
    unstated = []
    for a in parser._actions:
        if any(a.default is v for v in (None, False, argparse.SUPPRESS)) or not a.option_strings:
            continue
        text = formatter._expand_help(a) if a.help else ""
        if "default" not in text:
            unstated.append(f"{'/'.join(a.option_strings)}={a.default!r}")
    assert not unstated, f"kvpanel {command}: defaults not in --help: {unstated}"


def test_one_set_of_benchmark_defaults() -> None:
    """The CLI starts from BenchParams (LMCache's); the panel's dialog and the control API from
    BenchParams with the interactive defaults, defined once next to it."""
    from kvpanel.bench.cli import build_parser
    from kvpanel.bench.long_doc_qa import INTERACTIVE_DEFAULTS, BenchParams
    from kvpanel.panel.backend import BENCH_DEFAULTS

    defaults = BenchParams()
    cli = vars(build_parser().parse_args([]))
    for key, value in BENCH_DEFAULTS.items():
        assert getattr(defaults, key) == cli[key], key
        assert value == INTERACTIVE_DEFAULTS.get(key, getattr(defaults, key)), key
