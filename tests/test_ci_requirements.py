"""CI never passes with a tier untested: a missing redis-server fails `.ci/run` and, with CI set,
the Redis tests; a missing kvpanel module fails the import test instead of skipping it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bin_dir_without_redis(tmp_path: Path, *tools: str) -> Path:
    """A PATH dir with only ``tools`` from this machine (never redis-server / redis-cli)."""
    d = tmp_path / "bin"
    d.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        assert found is not None, tool
        (d / tool).symlink_to(found)
    return d


def test_ci_run_fails_when_redis_cannot_be_installed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    (repo / "scripts").mkdir()
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    (repo / "scripts" / "test.sh").write_text("echo THE-TESTS-RAN\n")
    bins = bin_dir_without_redis(tmp_path, "bash", "dirname")
    (bins / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
    (bins / "apt-get").chmod(0o755)
    env = {"PATH": str(bins), "HOME": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(repo / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "THE-TESTS-RAN" not in proc.stdout
    assert "redis-server" in proc.stderr


def run_pytest(args: list[str], env: dict[str, str], cwd: Path = REPO) -> tuple[int, str]:
    # Without the editable install's import hook, PYTHONPATH alone decides where kvpanel is.
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
        "import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "-q", "-rfEs", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_redis_tests_fail_in_ci_and_skip_elsewhere_without_redis(tmp_path: Path) -> None:
    bins = bin_dir_without_redis(tmp_path, "bash")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{bins}{os.pathsep}{Path(sys.executable).parent}"
    env["PYTHONPATH"] = str(REPO)
    tests = [
        "tests/cache/test_remote_tier.py::test_ttl_from_url",
        "tests/cache/test_store_remote.py::test_one_store_writes_another_hits",
    ]
    rc, out = run_pytest(tests, env)
    assert rc == 0 and "2 skipped" in out and "not installed (apt-get install" in out, out
    rc, out = run_pytest(tests, {**env, "CI": "true"})
    assert rc == 1 and "2 errors" in out and "CI must run this test" in out, out  # setup failed


def test_missing_kvpanel_module_fails_the_import_test(tmp_path: Path) -> None:
    shutil.copytree(
        REPO / "kvpanel", tmp_path / "kvpanel", ignore=shutil.ignore_patterns("metrics")
    )
    (tmp_path / "tests" / "panel").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "panel" / "test_imports.py", tmp_path / "tests" / "panel")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    rc, out = run_pytest(["tests/panel/test_imports.py", "-k", "metrics"], env, cwd=tmp_path)
    assert rc == 1 and "1 failed" in out and "kvpanel.metrics is missing" in out, out
