"""The top-level `kvpanel` command."""

from __future__ import annotations

import pytest

import kvpanel
from kvpanel.cli import main


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([flag]) == 0
    assert capsys.readouterr().out == f"kvpanel {kvpanel.__version__}\n"
