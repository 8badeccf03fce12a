"""Two `kvpanel serve` instances share KV through one real, password-protected Redis.

The same two servers also check what a password and the control token must never reach (stdout
JSON lines, stderr, the control API, /metrics) and where the control socket lives.
"""

from __future__ import annotations

import json
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

from .conftest import complete, http, output_text, start, wait_status

pytestmark = pytest.mark.vllm
PASSWORD = "SECRETPW-9f3c"


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    yield srv
    srv.kill()


def sockets_in(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if stat.S_ISSOCK(p.lstat().st_mode)]


def test_prompt_served_by_a_is_a_hit_on_b_and_no_secret_leaks(
    tiny_llama, tmp_path, redis_with_password
):
    redis_url = redis_with_password.url
    assert PASSWORD in redis_url
    display = f"redis://127.0.0.1:{redis_with_password.port}"
    rng = random.Random(42)
    p = [rng.randrange(10, 30000) for _ in range(600)]
    a = start(
        tiny_llama, tmp_path / "a", "--cpu-cache-gb", "0.1", "--remote-url", redis_url, name="a"
    )
    b = start(
        tiny_llama, tmp_path / "b", "--cpu-cache-gb", "0.1", "--remote-url", redis_url, name="b"
    )
    state_a = tmp_path / "a" / "state"
    try:
        assert a.token  # read from the token file the ready line names
        text_a = output_text(complete(a.url, tiny_llama, p, max_tokens=8))
        wait_status(a, lambda s: s["tiers"]["remote"]["bytes_in"] > 0)  # written through
        text_b = output_text(complete(b.url, tiny_llama, p, max_tokens=8))
        s = wait_status(b, lambda s: s["tiers"]["remote"]["hits"] >= 2)
        assert s["tiers"]["remote"]["healthy"]
        assert s["tiers"]["cpu"]["chunks"] >= 2  # promoted into B's own CPU tier
        assert text_a == text_b

        # The password: not in the status lines, the control API or /metrics; the display form
        # (no password) is what the status shows.
        assert s["config"]["remote_url"] == display
        code, status = http("GET", f"{a.url}/kvpanel/v1/status", token=a.token)
        assert code == 200 and status["config"]["remote_url"] == display
        code, logs = http("GET", f"{a.url}/kvpanel/v1/logs?since=0", token=a.token)
        assert code == 200
        _, metrics = http("GET", f"{a.url}/metrics")
        seen = json.dumps([list(a.statuses), status, logs]) + str(metrics)
        assert PASSWORD not in seen

        # The ready line names the token file instead of printing the token.
        token_file = state_a / "token"
        assert a.ready_event == {"event": "ready", "url": a.url, "token_file": str(token_file)}
        assert token_file.read_text().strip() == a.token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

        # The control socket lives in the 0700 state dir, not at a predictable /tmp path.
        assert stat.S_IMODE(state_a.stat().st_mode) == 0o700
        assert [p.name for p in sockets_in(state_a)] == [f"control-{a.proc.pid}.sock"]
        assert not os.path.exists(f"/tmp/kvpanel-{os.getuid()}-{a.proc.pid}.sock")
    finally:
        assert a.stop() == 0
        assert b.stop() == 0
    assert sockets_in(state_a) == []  # removed at exit (SIGTERM)
    for server, name in ((a, "a"), (b, "b")):
        out = "\n".join(server.stdout_lines)
        err = (tmp_path / name / f"{name}.log").read_text()
        assert PASSWORD not in out and PASSWORD not in err
        assert server.token is not None
        assert server.token not in out and server.token not in err
        assert json.loads(server.stdout_lines[-1])["event"] == "stopped"
