"""bench_main: exit codes, the results block, and the files it writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kvpanel.bench.cli import bench_main
from tests.bench.fake_server import FakeServer

FLAGS = [
    "long-doc-qa",
    "--num-documents", "3",
    "--document-length", "20",
    "--output-len", "2",
    "--repeat-count", "2",
    "--no-progress",
]  # fmt: skip


def test_missed_ttft_gain_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeServer(first_delay=0.05, hit_delay=0.01) as server:
        rc = bench_main([*FLAGS, "--base-url", server.url, "--expected-ttft-gain", "1000"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "=== BENCHMARK RESULTS ===" in out
    assert "Warmup round prompt count: 3" in out and "Query round prompt count: 6" in out
    assert "Actual TTFT gain:" in out
    assert "ERROR: TTFT gain" in err and "< expected 1000.00×" in err


def test_met_gains_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeServer(first_delay=0.05, hit_delay=0.01) as server:
        port = server.url.rsplit(":", 1)[1]
        rc = bench_main(
            [*FLAGS, "--port", port, "--completions", "--expected-ttft-gain", "0.001"]
            + ["--expected-latency-gain", "0.001"]
        )
    assert rc == 0
    assert "Actual latency gain:" in capsys.readouterr().out


def test_query_rounds_in_results_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeServer() as server:
        out = tmp_path / "r.json"
        rc = bench_main(
            [*FLAGS, "--base-url", server.url, "--query-rounds", "2", "--output", str(out)]
        )
    text = capsys.readouterr().out
    assert rc == 0
    assert "Query round 2 mean TTFT:" in text and "Query rounds (2) mean time:" in text
    rounds = json.loads(out.read_text())["rounds"]
    assert set(rounds) == {"warmup", "query", "query2"} and rounds["query2"]["count"] == 6
    with open(tmp_path / "r.csv") as f:
        assert {row["round"] for row in csv.DictReader(f)} == {"warmup", "query", "query2"}


@pytest.mark.parametrize(
    "bad",
    [
        ["--repeat-mode", "zigzag"],
        ["--num-documents", "0"],
        ["--hit-miss-ratio", "x"],
        ["--max-inflight-requests", "0"],
        ["--query-rounds", "0"],
        ["--compare", "vanilla,bogus", "--model", "m"],
        ["--compare", "vanilla"],  # no --model
    ],
)
def test_bad_args_exit_2(bad: list[str]) -> None:
    assert bench_main([*FLAGS, "--base-url", "http://127.0.0.1:9", *bad]) == 2


def test_unreachable_exits_3() -> None:
    with FakeServer() as server:
        url = server.url
    assert bench_main([*FLAGS, "--base-url", url]) == 3


def test_failed_requests_exit_3() -> None:
    with FakeServer(fail_status=500) as server:
        assert bench_main([*FLAGS, "--base-url", server.url, "--no-prewarm"]) == 3


def test_writes_json_csv_png(tmp_path: Path) -> None:
    out = tmp_path / "res" / "run.json"
    responses = tmp_path / "responses.txt"
    with FakeServer(tokenizer=False, style="token_ids") as server:
        rc = bench_main(
            [*FLAGS, "--base-url", server.url, "--output", str(out), "--hit-miss-ratio", "1:1"]
            + ["--responses-file", str(responses)]
        )
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["token_ids"] is True and data["model"] == "fake-model"
    assert set(data["rounds"]) == {"warmup", "query"}
    assert data["rounds"]["query"]["count"] == 6 and data["rounds"]["query"]["ttft_p90_s"] > 0
    assert len(data["records"]) == 9 and "api_key" not in data["params"]
    with out.with_suffix(".csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {r["round"] for r in rows} == {"warmup", "query"}
    assert all(float(r["ttft_s"]) > 0 and r["ok"] == "True" for r in rows)
    assert sum(r["forced_miss"] == "True" for r in rows) == 3
    assert responses.read_text().count("Response of request") == 9
    pytest.importorskip("matplotlib")
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_skipped_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from kvpanel.bench.report import write_plot
    from kvpanel.bench.result import BenchResult

    real_import = builtins.__import__

    def no_mpl(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    result = BenchResult(params={}, base_url="", model="m", token_ids=False)
    with pytest.warns(UserWarning, match="matplotlib"):
        assert write_plot(result, tmp_path / "x.png") is False
    assert not (tmp_path / "x.png").exists()
