"""`kvpanel serve --cache-secret`: keyed chunks on disk, hits and recompute-equal output, and the
secret never printed. Option parsing first (no vLLM), then one real engine."""

from __future__ import annotations

import hashlib

import pytest

from kvpanel.cache import disk_format as fmt
from kvpanel.serve.options import parse_serve_args
from kvpanel.settings import ConfigError

from .conftest import complete, http, output_text, start, wait_status

SECRET = "kvpanel-test-secret-4f1c9a7e2b"  # what must never be printed


def test_secret_flags_become_engine_environment(tmp_path) -> None:
    opts = parse_serve_args(["m", "--cache-secret", SECRET], env={})
    assert opts.cache_secret_env == {
        "KVPANEL_CACHE_SECRET": SECRET,
        "KVPANEL_CACHE_SECRET_FILE": "",
    }
    assert SECRET not in repr(opts) and SECRET not in str(opts.settings.to_extra_config())
    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    f.chmod(0o600)
    opts = parse_serve_args(["m", "--cache-secret-file", str(f)], env={})
    assert opts.cache_secret_env == {
        "KVPANEL_CACHE_SECRET": "",
        "KVPANEL_CACHE_SECRET_FILE": str(f),
    }
    assert parse_serve_args(["m"], env={"KVPANEL_CACHE_SECRET": SECRET}).cache_secret_env == {}
    for argv, message in [
        (["--cache-secret", "short"], "at least 16 bytes"),
        (["--cache-secret", ""], "empty"),
        (["--cache-secret", SECRET, "--cache-secret-file", str(f)], "not both"),
        (["--cache-secret", SECRET, "--offload", "native"], "drop the secret"),
    ]:
        with pytest.raises(ConfigError, match=message) as e:
            parse_serve_args(["m", *argv], env={})
        assert SECRET not in str(e.value)


@pytest.mark.vllm
def test_keyed_disk_chunks_hit_equal_recompute_and_secret_stays_hidden(tiny_llama, tmp_path):
    disk = tmp_path / "disk"
    p = [(i * 7919) % 20000 + 10 for i in range(600)]  # two full 256-token chunks and a tail
    server = start(
        tiny_llama,
        tmp_path,
        "--cpu-cache-gb",
        "0.25",
        "--disk-path",
        str(disk),
        "--disk-cache-gb",
        "0.5",
        "--cache-secret",
        SECRET,
        name="secret",
    )
    try:
        recomputed = output_text(complete(server.url, tiny_llama, p, max_tokens=8))
        wait_status(server, lambda s: s["tiers"]["disk"]["chunks"] >= 2)  # written through
        url, token = server.url, server.token
        assert http("POST", f"{url}/kvpanel/v1/tiers/cpu/clear", token=token)[0] == 200
        from_disk = output_text(complete(url, tiny_llama, p, max_tokens=8))
        s = wait_status(server, lambda s: s["tiers"]["disk"]["hits"] >= 2)
        assert s["tiers"]["disk"]["errors"] == 0 and s["config"]["cache_keyed"] is True
        assert from_disk == recomputed
        code, status = http("GET", f"{url}/kvpanel/v1/status", token=token)
        assert code == 200 and SECRET not in str(status)
    finally:
        assert server.stop() == 0
    # The chunks on disk carry a keyed MAC, not the plain checksum of their payload.
    files = list(disk.rglob("*.kvc"))
    assert len(files) >= 2
    for f in files:
        raw = f.read_bytes()
        header = fmt.ChunkHeader.unpack(raw)
        plain = hashlib.blake2b(raw[fmt.HEADER_BYTES :], digest_size=16).digest()
        assert header.checksum != plain
    # Nothing it printed holds the secret: stderr (vLLM's log included), every JSON line.
    stderr = (tmp_path / "secret.log").read_text()
    assert "KvpanelOffloadingSpec" in stderr  # the engine process's log is in it
    assert SECRET not in stderr and SECRET not in str(list(server.statuses))
