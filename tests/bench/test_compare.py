"""--compare with a fake ``kvpanel serve``: start, ready line, benchmark, SIGTERM, next mode."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from kvpanel.bench.cli import bench_main
from kvpanel.bench.server_proc import ServeFailed, ServeProcess, serve_command

FAKE_SERVE = Path(__file__).with_name("fake_serve.py")
SERVE = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_SERVE))}"


def test_serve_command() -> None:
    argv = serve_command(
        ["kvpanel", "serve"],
        "m",
        "native",
        engine_args="--max-model-len 4096 --enforce-eager",
        cpu_cache_gb=2,
        kv_cache_memory="1G",
        num_gpu_blocks_override=64,
    )
    assert argv[:9] == ["kvpanel", "serve", "m", "--no-ui", "--port", "0", "--offload", "native",
                        "--status-interval"]  # fmt: skip
    assert argv[argv.index("--cpu-cache-gb") + 1] == "2"
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == "1G"
    assert argv[argv.index("--num-gpu-blocks-override") + 1] == "64"
    assert argv[-3:] == ["--max-model-len", "4096", "--enforce-eager"]
    assert "--cpu-cache-gb" not in serve_command(["k"], "m", "none", cpu_cache_gb=2)


def test_serve_failure_reports_stderr() -> None:
    argv = [sys.executable, str(FAKE_SERVE), "m", "--offload", "native"]
    with pytest.raises(ServeFailed, match="CUDA-alike"):
        ServeProcess.start(argv, ready_timeout_s=30)


def test_token_comes_from_the_file_the_ready_line_names() -> None:
    argv = serve_command(shlex.split(SERVE), "m", "none")
    server = ServeProcess.start(argv, ready_timeout_s=30)
    try:
        assert server.ready_event is not None and "token" not in server.ready_event
        assert server.token == "fake-token-0123456789"
    finally:
        assert server.stop() == 0


def test_serve_ready_timeout() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(ServeFailed, match="not ready after"):
        ServeProcess.start(argv, ready_timeout_s=0.5)


def test_compare_three_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp.json"
    rc = bench_main(
        [
            "long-doc-qa",
            "--compare", "vanilla,native,kvpanel",
            "--model", "tiny-llama",
            "--serve-command", SERVE,
            "--cpu-cache-gb", "1.5",
            "--engine-args", "--max-model-len 512",
            "--num-documents", "2",
            "--document-length", "10",
            "--output-len", "2",
            "--ready-timeout", "60",
            "--no-progress",
            "--query-rounds", "2",
            "--output", str(out),
        ]
    )  # fmt: skip
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "=== COMPARISON (long_doc_qa) ===" in stdout
    assert "TTFT, 2 rounds" in stdout and "total, 2 rounds" in stdout
    data = json.loads(out.read_text())
    modes = {m["mode"]: m for m in data["modes"]}
    assert list(modes) == ["vanilla", "native", "kvpanel"]
    assert modes["vanilla"]["ok"] and modes["kvpanel"]["ok"]
    assert not modes["native"]["ok"] and "CUDA-alike" in modes["native"]["error"]
    assert modes["vanilla"]["query_ttft_vs_vanilla"] == pytest.approx(1.0)
    assert modes["kvpanel"]["query_ttft_vs_vanilla"] > 0
    assert modes["native"]["query_mean_ttft_s"] is None
    assert modes["vanilla"]["server_exit_code"] == 0 and modes["kvpanel"]["server_exit_code"] == 0
    kv_argv = modes["kvpanel"]["last_status"]["argv"]
    assert kv_argv[0] == "tiny-llama" and "--cpu-cache-gb" in kv_argv
    assert kv_argv[-2:] == ["--max-model-len", "512"]
    assert modes["kvpanel"]["result"]["rounds"]["query"]["count"] == 4
    # --query-rounds 2: both rounds ran; the per-round lists and their means are reported.
    kv = modes["kvpanel"]
    assert kv["result"]["rounds"]["query2"]["count"] == 4 and kv["query_rounds"] == 2
    assert kv["query_total_s_per_round"][0] == pytest.approx(kv["query_total_s"])
    assert kv["query_total_s_all_rounds"] == pytest.approx(sum(kv["query_total_s_per_round"]) / 2)
    assert modes["native"]["query_rounds"] == 0 and modes["native"]["query_total_s_per_round"] == []
    # Phase timings: a failed start has none; a served mode has all three.
    assert modes["native"]["phases_s"] == {}
    assert set(modes["kvpanel"]["phases_s"]) == {"start", "bench", "stop"}
    assert all(v >= 0 for v in modes["kvpanel"]["phases_s"].values())
    assert (tmp_path / "cmp-kvpanel.csv").exists() and (tmp_path / "serve-native.log").exists()


def test_compare_output_hides_secrets_in_the_serve_command() -> None:
    import io

    from kvpanel.bench.compare import comparison_dict, run_modes
    from kvpanel.bench.long_doc_qa import BenchParams

    secret_args = ["--remote-url", "redis://:PW-123@127.0.0.1:1", "--token", "TOK-456"]

    def build_argv(offload: str) -> list[str]:
        return serve_command(shlex.split(SERVE), "m", offload) + secret_args

    log = io.StringIO()
    params = BenchParams(num_documents=1, document_length=10, output_len=1)
    outcomes = run_modes(params, ["native"], build_argv, ready_timeout_s=30, log=log)
    assert "--remote-url redis://127.0.0.1:1" in log.getvalue()
    data = json.dumps(comparison_dict(outcomes, params, "m"))
    for text in (log.getvalue(), data):
        assert "PW-123" not in text and "TOK-456" not in text
