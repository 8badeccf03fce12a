"""The engine/cache core must not pull in textual (the panel is optional UI)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "module", ["kvpanel", "kvpanel.cache", "kvpanel.metrics", "kvpanel.panel.backend"]
)
def test_core_does_not_import_textual(module: str) -> None:
    # kvpanel's own modules: one that is missing is a broken package, never a reason to skip.
    assert importlib.util.find_spec(module) is not None, f"{module} is missing"
    code = (
        f"import {module}, sys; "
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.')); "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=env)
