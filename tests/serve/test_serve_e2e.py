"""`kvpanel serve --no-ui` as users run it: real process, real vLLM (CPU), real HTTP."""

from __future__ import annotations

import os
import random
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import complete, http, output_text, start, wait_status

pytestmark = pytest.mark.vllm
MiB = 1 << 20


def prompt(seed: int, n: int = 600) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 30000) for _ in range(n)]


def cpu(status: dict) -> dict:
    return status["tiers"]["cpu"]


@pytest.fixture(scope="module")
def disk_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("disk")


def test_serve_hits_metrics_control_api_and_clean_shutdown(tiny_llama, tmp_path, disk_dir):
    server = start(
        tiny_llama,
        tmp_path,
        "--cpu-cache-gb",
        "0.25",
        "--disk-path",
        str(disk_dir),
        "--disk-cache-gb",
        "0.5",
    )
    try:
        url, token = server.url, server.token
        assert url and token
        token_file = tmp_path / "state" / "token"
        assert token_file.read_text().strip() == token
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600

        p = prompt(1)
        first = complete(url, tiny_llama, p)
        second = complete(url, tiny_llama, p)
        assert output_text(first) == output_text(second)
        hit = wait_status(server, lambda s: cpu(s)["hits"] >= 2)
        assert hit["requests"]["finished"] >= 2
        assert hit["ttft_s"]["p50"] is not None

        status, metrics = http("GET", f"{url}/metrics")
        assert status == 200
        assert 'kvpanel_tier_hits_total{tier="cpu"}' in metrics
        assert "vllm:" in metrics

        # The control API: no token / wrong token -> 401 and nothing changes.
        before = http("GET", f"{url}/kvpanel/v1/status", token=token)[1]
        cap = cpu(before)["capacity_bytes"]
        assert http("GET", f"{url}/kvpanel/v1/status")[0] == 401
        assert http("GET", f"{url}/kvpanel/v1/status", token="wrong")[0] == 401
        resize = f"{url}/kvpanel/v1/tiers/cpu/resize"
        assert http("POST", resize, {"capacity_bytes": MiB})[0] == 401
        assert http("POST", resize, {"capacity_bytes": MiB}, token="nope")[0] == 401
        for bad in (
            {"capacity_bytes": -1},
            {"capacity_bytes": "big"},
            {"capacity_bytes": 1 << 60},
            {},
            [1, 2],
        ):
            code, body = http("POST", resize, bad, token=token)
            assert code == 400 and body["error"], (bad, body)
        assert http("POST", resize, raw=b"{not json", token=token)[0] == 400
        assert http("POST", resize, raw=b"x" * (70 * 1024), token=token)[0] == 413
        assert (
            http("POST", f"{url}/kvpanel/v1/tiers/tape/resize", {"capacity_bytes": 1}, token=token)[
                0
            ]
            == 400
        )
        after = http("GET", f"{url}/kvpanel/v1/status", token=token)[1]
        assert cpu(after)["capacity_bytes"] == cap

        # Resize under load: shrink the CPU tier while requests run; none may fail.
        prompts = [prompt(100 + i) for i in range(6)]
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(complete, url, tiny_llama, q, 16) for q in prompts * 2]
            threading.Event().wait(0.5)
            code, body = http("POST", resize, {"capacity_bytes": 2 * MiB}, token=token)
            assert code == 200, body
            results = [f.result() for f in futures]  # raises if any request failed
        assert all(r["choices"][0]["finish_reason"] for r in results)
        now = http("GET", f"{url}/kvpanel/v1/status", token=token)[1]
        assert cpu(now)["capacity_bytes"] <= 2 * MiB
        assert cpu(now)["used_bytes"] <= cpu(now)["capacity_bytes"]
        # Grow back, then clear.
        assert http("POST", resize, {"capacity_bytes": 64 * MiB}, token=token)[0] == 200
        code, body = http("POST", f"{url}/kvpanel/v1/tiers/cpu/clear", token=token)
        assert code == 200 and body["tiers"]["cpu"]["chunks"] == 0
    finally:
        rc = server.stop()
    assert rc == 0
    assert any(e.get("event") == "stopped" and e.get("flushed") for e in server.statuses)
    assert list(disk_dir.rglob("*.kvc")), "the disk tier was flushed"


def test_restart_on_same_disk_dir_hits(tiny_llama, tmp_path, disk_dir):
    # Runs after the test above: the previous server left prompt(1)'s chunks on disk.
    assert list(disk_dir.rglob("*.kvc"))
    server = start(
        tiny_llama,
        tmp_path,
        "--cpu-cache-gb",
        "0.25",
        "--disk-path",
        str(disk_dir),
        "--disk-cache-gb",
        "0.5",
    )
    try:
        complete(server.url, tiny_llama, prompt(1))
        s = wait_status(server, lambda s: s["tiers"]["disk"]["hits"] >= 2)
        assert cpu(s)["chunks"] >= 2  # promoted into the CPU tier
    finally:
        assert server.stop() == 0


def test_seed_lmcache_yaml_is_accepted(tiny_llama, tmp_path, monkeypatch):
    cfg = tmp_path / "backend_cpu.yaml"
    cfg.write_text("chunk_size: 256\nlocal_cpu: True\nmax_local_cpu_size: 80\n")
    monkeypatch.setenv("LMCACHE_CONFIG_FILE", str(cfg))
    server = start(tiny_llama, tmp_path)
    try:
        s = wait_status(server, lambda s: True)
        assert s["config"]["cpu_bytes"] == 80 << 30
        assert s["config"]["chunk_tokens"] == 256
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("chunk_size: [256\n", "invalid YAML"),
        ("tiers:\n  tape: {size_gb: 1}\n", "unknown tier 'tape'"),
        ("max_local_cpu_size: -2\n", "must not be negative"),
    ],
)
def test_broken_config_exits_2_with_one_line(tmp_path, text, message):
    import subprocess
    import sys

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvpanel.cli",
            "serve",
            "--no-ui",
            "--config",
            str(cfg),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "state").exists()  # nothing created


def test_conflicting_flag_and_config(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_local_cpu_size: 8\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kvpanel.cli", "serve", "--config", str(cfg), "--cpu-cache-gb", "4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "conflicting cpu_bytes" in proc.stderr
