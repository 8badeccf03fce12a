"""`kvpanel serve MODEL --data-parallel-size 2` (real vLLM on CPU): two engine cores, each with its
own store and control socket, one disk dir between them. The status is both engines merged,
tier operations reach both, and a prompt prefilled by one is served from disk to the other with
the same greedy output."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from .conftest import complete, http, output_text, start, wait_status

pytestmark = pytest.mark.vllm
MiB = 1 << 20


def prompt(seed: int, n: int = 600) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 30000) for _ in range(n)]


def test_dp2_status_merged_ops_reach_both_engines_and_disk_is_shared(tiny_llama, tmp_path):
    disk = tmp_path / "disk"
    server = start(
        tiny_llama,
        tmp_path,
        "--data-parallel-size",
        "2",
        "--cpu-cache-gb",
        "0.25",
        "--disk-path",
        str(disk),
        "--disk-cache-gb",
        "0.5",
    )
    try:
        url, token = server.url, server.token
        assert url and token
        status = wait_status(server, lambda s: "cpu" in s["tiers"], timeout=60)
        # --cpu-cache-gb is the server's: two engines of half each, shown as one tier.
        assert status["tiers"]["cpu"]["capacity_bytes"] == pytest.approx(256 * MiB, rel=0.02)
        sockets = sorted(p.name for p in (tmp_path / "state").glob("control-*.sock*"))
        assert len(sockets) == 2 and sockets[1].endswith(".dp1"), sockets

        ids = prompt(11)
        first = output_text(complete(url, tiny_llama, ids))
        wait_status(server, lambda s: s["tiers"]["disk"]["chunks"] >= 2, timeout=60)
        # Whichever engine vLLM routes them to: a CPU hit where it was computed, a disk hit
        # (after the write-behind) in the other engine, the same greedy text everywhere.
        outs = [output_text(complete(url, tiny_llama, ids)) for _ in range(6)]
        assert set(outs) == {first}
        hits = wait_status(
            server, lambda s: s["tiers"]["cpu"]["hits"] + s["tiers"]["disk"]["hits"] >= 2
        )
        assert hits["tiers"]["disk"]["capacity_bytes"] == 512 * MiB  # one shared cap, not two

        # A resize is the server's total, split over both engines; a clear empties both.
        api = f"{url}/kvpanel/v1/tiers/cpu"
        code, body = http("POST", f"{api}/resize", {"capacity_bytes": 64 * MiB}, token=token)
        assert code == 200, body
        assert body["tiers"]["cpu"]["capacity_bytes"] == pytest.approx(64 * MiB, rel=0.05)
        code, body = http("POST", f"{api}/clear", token=token)
        assert code == 200 and body["tiers"]["cpu"]["chunks"] == 0, body
        assert output_text(complete(url, tiny_llama, ids)) == first  # now from disk
    finally:
        rc = server.stop()
    assert rc == 0
    assert not list(Path(tmp_path / "state").glob("control-*.sock*")), "sockets left behind"
