"""``--restart-before-query`` with a fake ``kvpanel serve`` (the real one: test_restart_e2e.py)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from kvpanel.bench import restart as restart_mod
from kvpanel.bench.cli import bench_main
from kvpanel.bench.restart import drop_page_cache
from kvpanel.bench.server_proc import serve_command

FAKE_SERVE = Path(__file__).with_name("fake_serve.py")
SERVE = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_SERVE))}"


def test_each_mode_is_restarted_between_the_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A directory cannot be written like drop_caches: the "not permitted" case, on any machine.
    monkeypatch.setattr(restart_mod, "DROP_CACHES", tmp_path)
    out = tmp_path / "r.json"
    disk = tmp_path / "disk"
    rc = bench_main(
        [
            "long-doc-qa",
            "--compare", "vanilla,kvpanel-cpu,kvpanel",
            "--model", "tiny-llama",
            "--serve-command", SERVE,
            "--disk-path", str(disk),
            "--disk-cache-gb", "0.5",
            "--num-documents", "3",
            "--document-length", "10",
            "--output-len", "2",
            "--ready-timeout", "60",
            "--no-progress",
            "--restart-before-query",
            "--drop-page-cache",
            "--output", str(out),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    table = captured.out[captured.out.index("=== RESTART BEFORE THE QUERY ROUND") :]
    assert "total q/w" in table and "TTFT q/w" in table
    assert "page cache NOT dropped: cannot write" in table
    assert "[kvpanel] page cache NOT dropped" in captured.err
    data = json.loads(out.read_text())
    assert data["restart_before_query"] is True
    modes = {m["mode"]: m for m in data["modes"]}
    for name in ("vanilla", "kvpanel-cpu", "kvpanel"):
        m = modes[name]
        assert m["ok"], m["error"]
        r = m["restart"]
        assert r["exit_code"] == 0 and r["flushed"] is True
        assert r["page_cache"] == {
            "requested": True,
            "dropped": False,
            "note": r["page_cache"]["note"],
        }
        assert str(tmp_path) in r["page_cache"]["note"]
        # The query round ran against a new process started with the same argv.
        first, second = r["status_before_stop"], m["last_status"]
        assert first["pid"] != second["pid"]
        assert first["argv"] == second["argv"]
        # Taken on the new server after its pre-warm, before the query round's requests.
        assert r["status_before_query"]["pid"] == second["pid"]
        assert r["status_before_query"]["requests"] == 5
        assert second["requests"] == 5 + 6  # pre-warm and query round (3 docs x 2): a new server
        result = m["result"]
        assert result["restarted_before_query"] is True
        assert result["restarted_base_url"] and result["restarted_base_url"] != result["base_url"]
        assert result["rounds"]["warmup"]["count"] == 3 and result["rounds"]["query"]["count"] == 6
        ratio = r["query_over_warmup_total"]
        assert ratio == pytest.approx(r["query_total_s"] / r["warmup_total_s"])
        assert r["query_over_warmup_ttft"] == pytest.approx(
            r["query_mean_ttft_s"] / r["warmup_mean_ttft_s"]
        )
        assert r["same_text_as_warmup"] == {"same": 6, "compared": 6}
        assert r["start_s"] >= 0 and r["stop_s"] >= 0
        assert Path(r["log_path"]) == tmp_path / f"serve-{name}-restarted.log"
    # The disk tier goes to the kvpanel mode only (vanilla's server would refuse it);
    # kvpanel-cpu is kvpanel without it.
    assert "--disk-path" not in modes["vanilla"]["last_status"]["argv"]
    cpu_argv = modes["kvpanel-cpu"]["last_status"]["argv"]
    assert cpu_argv[cpu_argv.index("--offload") + 1] == "kvpanel"
    assert "--disk-path" not in cpu_argv and "--disk-cache-gb" not in cpu_argv
    assert modes["kvpanel-cpu"]["offload"] == "kvpanel"
    kv_argv = modes["kvpanel"]["last_status"]["argv"]
    assert kv_argv[kv_argv.index("--disk-path") + 1] == str(disk)
    assert kv_argv[kv_argv.index("--disk-cache-gb") + 1] == "0.5"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--restart-before-query"], "--restart-before-query needs --compare"),
        (["--drop-page-cache"], "--drop-page-cache needs --restart-before-query"),
        (["--disk-path", "/tmp/x"], "use --compare"),
        (["--compare", "kvpanel", "--disk-cache-gb", "1"], "--disk-cache-gb needs --disk-path"),
    ],
)
def test_restart_flags_where_they_cannot_work_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_main(["long-doc-qa", "--model", "m", *argv]) == 2
    assert message in capsys.readouterr().err


def test_help_names_the_restart_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["long-doc-qa", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--restart-before-query" in text and "restart benchmark" in text
    assert "Needs --compare" in text


def test_drop_page_cache_writes_3_after_sync(tmp_path: Path) -> None:
    target = tmp_path / "drop_caches"
    target.write_text("")
    done = drop_page_cache(target)
    assert done.dropped and done.requested
    assert target.read_text() == "3\n"
    missing = drop_page_cache(tmp_path / "no" / "such")
    assert not missing.dropped and "NOT dropped" in missing.note


def test_serve_command_passes_the_disk_tier_to_kvpanel_only() -> None:
    for offload in ("none", "native", "lmcache"):
        assert "--disk-path" not in serve_command(["k"], "m", offload, disk_path="/d")
    argv = serve_command(["k"], "m", "kvpanel", disk_path="/d", disk_cache_gb=40)
    assert argv[argv.index("--disk-path") + 1 :][:3] == ["/d", "--disk-cache-gb", "40"]


def test_lmcache_retrieving_nothing_after_a_restart_is_the_finding_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without --restart-before-query, no "Retrieved" line fails the lmcache mode; after a
    # restart LMCache's CPU backend has nothing to retrieve, and that is what the run shows.
    monkeypatch.delenv("FAKE_LMCACHE_RETRIEVED", raising=False)
    out = tmp_path / "r.json"
    rc = bench_main(
        [
            "long-doc-qa",
            "--compare", "lmcache",
            "--model", "tiny-llama",
            "--serve-command", SERVE,
            "--num-documents", "2",
            "--document-length", "10",
            "--output-len", "2",
            "--ready-timeout", "60",
            "--no-progress",
            "--restart-before-query",
            "--output", str(out),
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    (m,) = json.loads(out.read_text())["modes"]
    assert m["ok"] and not m["error"], m["error"]
    assert m["lmcache_retrieval"]["log"] == str(tmp_path / "serve-lmcache-restarted.log")
    assert m["lmcache_retrieval"]["retrieved_tokens"] == 0
    assert m["restart"]["page_cache"]["requested"] is False
