"""``--compare ...,lmcache,...``: the mode name, its server's environment, and the check that
LMCache really retrieved KV (its "Retrieved N out of M required tokens" log lines).

Fast: the servers are tests/bench/fake_serve.py, which logs LMCache-style lines in lmcache mode.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from kvpanel.bench.cli import bench_main
from kvpanel.bench.compare import parse_modes
from kvpanel.bench.lmcache_check import retrieval_error, scan_lines, scan_log
from kvpanel.bench.server_proc import OFFLOAD_MODES, serve_command, serve_env

FAKE_SERVE = Path(__file__).with_name("fake_serve.py")
SERVE = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_SERVE))}"

# What LMCache 0.5 prints (lmcache.logging: colour codes around the prefix), and older forms.
LOG_OK = """\
INFO 01-01 00:00:00 [api_server.py:1] vLLM API server version 0.x
\x1b[32;20m[2026-01-01 00:00:01,000] LMCache INFO:\x1b[0m Creating LMCacheEngine with config: x
\x1b[32;20m[2026-01-01 00:00:02,000] LMCache INFO:\x1b[0m [req_id=cmpl-1] Retrieved 19968 out \
of 20001 required tokens (from 20001 total tokens). size: 2.4375 gb, cost 95.1 ms, \
throughput: 25.6 GB/s; \x1b[3m(cache_engine.py:700:lmcache.v1.cache_engine)\x1b[0m
[2026-01-01 00:00:03,000] LMCache INFO: Retrieved 0 out of 20001 required tokens (from 20001 \
total tokens). size: 0.0000 gb, cost 0.1 ms, throughput: 0.0 GB/s;
[2026-01-01 00:00:04,000] LMCache INFO: [req_id=cmpl-3] Retrieved 512 out of 512 out of total \
600 tokens
"""
LOG_NONE = """\
INFO 01-01 00:00:00 [api_server.py:1] vLLM API server version 0.x
INFO 01-01 00:00:05 [loggers.py:1] Avg prompt throughput: 100.0 tokens/s
"""
LOG_ZERO = """\
[2026-01-01 00:00:03,000] LMCache INFO: [req_id=a] Retrieved 0 out of 20001 required tokens \
(from 20001 total tokens). size: 0.0000 gb, cost 0.1 ms, throughput: 0.0 GB/s;
[2026-01-01 00:00:03,000] LMCache INFO: [req_id=b] Retrieved 0 out of 9000 required tokens \
(from 9000 total tokens). size: 0.0000 gb, cost 0.1 ms, throughput: 0.0 GB/s;
"""
LOG_DEGRADED = """\
[2026-01-01 00:00:01,000] LMCache ERROR: LMCache worker failed to start; running in degraded mode
[2026-01-01 00:00:03,000] LMCache WARNING: LMCache is unhealthy, skipping retrieve operation
"""


def test_parse_modes_knows_lmcache() -> None:
    assert OFFLOAD_MODES["lmcache"] == "lmcache"
    assert parse_modes("vanilla,native,lmcache,kvpanel") == [
        "vanilla",
        "native",
        "lmcache",
        "kvpanel",
    ]
    assert parse_modes(" lmcache ") == ["lmcache"]
    with pytest.raises(ValueError, match=r"known: vanilla, native, lmcache, kvpanel"):
        parse_modes("vanilla,lmcahce")
    with pytest.raises(ValueError, match="repeated"):
        parse_modes("lmcache,kvpanel,lmcache")


def test_serve_command_and_env_for_lmcache() -> None:
    argv = serve_command(["kvpanel", "serve"], "m", "lmcache", cpu_cache_gb=40)
    assert argv[argv.index("--offload") + 1] == "lmcache"
    assert argv[argv.index("--cpu-cache-gb") + 1] == "40"  # LMCache's max_local_cpu_size
    base = {"PATH": "/bin", "PYTHONHASHSEED": "random", "LMCACHE_LOG_LEVEL": "WARNING"}
    env = serve_env("lmcache", base)
    assert env["PATH"] == "/bin"
    assert env["PYTHONHASHSEED"] == "0"
    assert env["LMCACHE_TRACK_USAGE"] == "false"
    assert env["LMCACHE_LOG_LEVEL"] == "INFO"  # the retrieval lines are INFO
    assert serve_env("lmcache", {"LMCACHE_LOG_LEVEL": "debug"})["LMCACHE_LOG_LEVEL"] == "debug"
    for offload in ("none", "native", "kvpanel"):  # other modes: the environment as it is
        assert serve_env(offload, base) == base


def test_scan_counts_retrieved_lines_and_tokens(tmp_path: Path) -> None:
    scan = scan_lines(LOG_OK.splitlines())
    assert scan.retrieved_lines == 3
    assert scan.hit_lines == 2
    assert scan.retrieved_tokens == 19968 + 512
    assert scan.required_tokens == 20001 + 20001 + 512
    assert scan.unhealthy_lines == 0
    assert retrieval_error(scan, "x.log") is None
    log = tmp_path / "serve-lmcache.log"
    log.write_text(LOG_OK)
    assert scan_log(log) == scan


def test_scan_without_retrieved_lines_fails(tmp_path: Path) -> None:
    log = tmp_path / "serve-lmcache.log"
    log.write_text(LOG_NONE)
    scan = scan_log(log)
    assert (scan.retrieved_lines, scan.retrieved_tokens) == (0, 0)
    assert retrieval_error(scan, log) == f"LMCache retrieved nothing (see {log})"
    # A missing log is "nothing retrieved", not a crash.
    missing = tmp_path / "nope.log"
    expected = f"LMCache retrieved nothing (see {missing})"
    assert retrieval_error(scan_log(missing), missing) == expected


def test_scan_with_only_zero_retrievals_fails() -> None:
    scan = scan_lines(LOG_ZERO.splitlines())
    assert (scan.retrieved_lines, scan.hit_lines, scan.retrieved_tokens) == (2, 0, 0)
    error = retrieval_error(scan, "s.log")
    assert error is not None
    assert error.startswith("LMCache retrieved nothing (see s.log)")
    assert "2 retrieval lines, all 0 tokens" in error


def test_scan_names_degraded_mode() -> None:
    scan = scan_lines(LOG_DEGRADED.splitlines())
    assert scan.unhealthy_lines == 2 and "degraded mode" in scan.first_unhealthy
    error = retrieval_error(scan, "s.log")
    assert error is not None and "LMCache retrieved nothing (see s.log)" in error
    assert "degraded mode" in error


def compare(tmp_path: Path, modes: str, *extra: str) -> int:
    return bench_main(
        [
            "long-doc-qa",
            "--compare", modes,
            "--model", "tiny-llama",
            "--serve-command", SERVE,
            "--cpu-cache-gb", "1.5",
            "--num-documents", "2",
            "--document-length", "10",
            "--output-len", "2",
            "--ready-timeout", "60",
            "--no-progress",
            "--no-plot",
            *extra,
        ]
    )  # fmt: skip


def test_compare_lmcache_that_retrieved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_LMCACHE_RETRIEVED", "512")
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    out = tmp_path / "cmp.json"
    assert compare(tmp_path, "vanilla,lmcache", "--output", str(out)) == 0
    captured = capsys.readouterr()
    assert "[lmcache] LMCache retrieved" in captured.err
    modes = {m["mode"]: m for m in json.loads(out.read_text())["modes"]}
    lm = modes["lmcache"]
    assert lm["ok"] and lm["error"] == "", lm["error"]
    assert lm["offload"] == "lmcache"
    log = tmp_path / "serve-lmcache.log"
    assert lm["server_log"] == str(log)
    retrieval = lm["lmcache_retrieval"]
    assert retrieval["log"] == str(log)
    n = retrieval["retrieved_lines"]  # one line per request the fake served (prewarm included)
    assert n >= 4 and retrieval["hit_lines"] == n and retrieval["retrieved_tokens"] == 512 * n
    # The server ran with LMCache's environment; vanilla did not get it.
    assert lm["last_status"]["env"] == {
        "PYTHONHASHSEED": "0",
        "LMCACHE_TRACK_USAGE": "false",
        "LMCACHE_LOG_LEVEL": "INFO",
    }
    assert "env" not in modes["vanilla"]["last_status"]
    assert "lmcache_retrieval" not in modes["vanilla"]
    assert "lmcache query-round TTFT gain over vanilla" in captured.out
    assert "(mode failed)" not in captured.out


def test_compare_lmcache_that_retrieved_nothing_fails_but_keeps_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKE_LMCACHE_RETRIEVED", "0")
    out = tmp_path / "cmp.json"
    assert compare(tmp_path, "vanilla,lmcache", "--output", str(out)) == 0  # vanilla ran
    table = capsys.readouterr().out
    log = tmp_path / "serve-lmcache.log"
    modes = {m["mode"]: m for m in json.loads(out.read_text())["modes"]}
    lm = modes["lmcache"]
    assert not lm["ok"]
    assert lm["error"].startswith(f"LMCache retrieved nothing (see {log})"), lm["error"]
    assert "all 0 tokens" in lm["error"]
    assert lm["lmcache_retrieval"]["retrieved_lines"] >= 4
    assert lm["lmcache_retrieval"]["retrieved_tokens"] == 0
    # The numbers stay for inspection.
    assert lm["result"]["rounds"]["query"]["count"] == 4
    assert lm["query_mean_ttft_s"] > 0
    assert (tmp_path / "cmp-lmcache.csv").exists()
    assert re.search(r"^lmcache\s+failed\s+\d+\.\d{3}s\s+\d+\.\d{3}s", table, re.M), table
    assert "(mode failed)" in table and f"lmcache: LMCache retrieved nothing (see {log})" in table


def test_compare_lmcache_without_output_keeps_a_temp_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FAKE_LMCACHE_RETRIEVED", raising=False)  # no retrieval lines at all
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the kept log goes
    monkeypatch.setattr("tempfile.tempdir", None)
    assert compare(tmp_path, "lmcache") == 3  # the only mode failed
    table = capsys.readouterr().out
    logs = list(tmp_path.glob("kvpanel-serve-lmcache-*.log"))
    assert len(logs) == 1, logs
    assert f"lmcache: LMCache retrieved nothing (see {logs[0]})" in table
    assert "starting fake serve" in logs[0].read_text()
