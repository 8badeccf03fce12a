"""The control API's tier operations and what the status then shows: the vllm tier is refused
with a 409 that says why, a resize shows in ``config`` (the Engine card reads it), and the disk
tier's resize bound is its free space plus what it holds, said in GiB/TiB, not raw bytes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from kvpanel.cache.keys import Fingerprint
from kvpanel.serve.control_api import make_router
from kvpanel.serve.hub import StatusHub
from kvpanel.vllm_ext.control import handle_request

TOKEN = "s3cret"
STATIC = {
    "model": {"name": "tiny"},
    "config": {"cpu_bytes": 1 << 30, "disk_bytes": 0, "chunk_tokens": 16},
}


class StoreControl:
    """The engine's control socket, in process: the real handler over a real TieredStore."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def call(self, **request: Any) -> dict[str, Any]:
        return handle_request(self.store, request)


def client(hub: StatusHub) -> TestClient:
    app = FastAPI()
    app.include_router(make_router(hub, TOKEN))
    return TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


def fp() -> Fingerprint:
    return Fingerprint("m", "bfloat16", "test", 16, 16, 4096)


def test_vllm_tier_ops_are_refused_with_the_reason(tmp_path: Path) -> None:
    from kvpanel.cache.store import TieredStore

    with TieredStore(fp(), cpu_bytes=1 << 20) as store:
        api = client(StatusHub(STATIC, StoreControl(store)))
        assert "vllm" in api.get("/kvpanel/v1/status").json()["tiers"]
        for op, body in (("clear", None), ("resize", {"capacity_bytes": 1 << 20})):
            r = api.post(f"/kvpanel/v1/tiers/vllm/{op}", json=body)
            assert r.status_code == 409, (op, r.status_code, r.text)
            error = r.json()["error"]
            assert "vLLM's own KV cache" in error and "unknown tier" not in error, error


def test_resize_shows_in_config_and_disk_bound_is_free_space(tmp_path: Path) -> None:
    import shutil

    from kvpanel.cache.store import TieredStore

    disk = tmp_path / "disk"
    with TieredStore(fp(), cpu_bytes=1 << 20, disk_path=disk, disk_bytes=1 << 20) as store:
        api = client(StatusHub(STATIC, StoreControl(store)))
        r = api.post("/kvpanel/v1/tiers/cpu/resize", json={"capacity_bytes": 2 << 20})
        assert r.status_code == 200, r.text
        snap = api.get("/kvpanel/v1/status").json()
        assert snap["tiers"]["cpu"]["capacity_bytes"] == 2 << 20
        assert snap["config"]["cpu_bytes"] == 2 << 20  # not the size it started with

        usage = shutil.disk_usage(disk)
        bound = snap["tiers"]["disk"]["max_capacity_bytes"]
        # free space + what the tier holds (nothing yet), never the filesystem's total size
        assert abs(bound - usage.free) < 64 << 20, (bound, usage)
        assert bound < usage.total or usage.free == usage.total
        r = api.post("/kvpanel/v1/tiers/disk/resize", json={"capacity_bytes": 100 << 40})
        assert r.status_code == 400
        error = r.json()["error"]
        assert "100 TiB" in error and "free" in error, error
        assert not re.search(r"\d{7,}", error), error  # no raw byte counts
