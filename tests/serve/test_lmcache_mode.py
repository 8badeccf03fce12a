"""``kvpanel serve --offload lmcache``: flags, the LMCache YAML, the vLLM argv, and the refusals.

No vLLM engine starts here: everything stops before the model loads (lmcache is not installed
in the test environment; where it needs to be "found", find_spec is faked).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
import yaml

from kvpanel.serve import lmcache_mode
from kvpanel.serve.options import ServeError, parse_serve_args
from kvpanel.settings import GB

CONNECTOR_JSON = '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'
LMCACHE_INSTALLED = importlib.util.find_spec("lmcache") is not None
_real_find_spec = importlib.util.find_spec
request_cleanup: list[str] = []  # LMCache YAML files the tests made kvpanel write


@pytest.fixture
def environ() -> Iterator[dict[str, str]]:
    """A scratch environment for prepare(), and os.environ restored after the test."""
    saved = dict(os.environ)
    yield {}
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def lmcache_found(monkeypatch: pytest.MonkeyPatch) -> None:
    def find_spec(name: str, *args: object) -> ModuleSpec | None:
        if name == "lmcache":
            return ModuleSpec("lmcache", None)
        return _real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def lmcache_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def find_spec(name: str, *args: object) -> ModuleSpec | None:
        return None if name == "lmcache" else _real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def read_yaml(path: str) -> dict:
    data = yaml.safe_load(Path(path).read_text())
    assert isinstance(data, dict)
    return data


def prepared(argv: list[str], env: dict[str, str]) -> lmcache_mode.Prepared:
    p = lmcache_mode.prepare(parse_serve_args(argv, env=dict(env)), env)
    if p.written:  # prepare() removes it at interpreter exit; these tests clean up at once
        request_cleanup.append(p.config_path)
    return p


@pytest.fixture(autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    while request_cleanup:
        Path(request_cleanup.pop()).unlink(missing_ok=True)


def test_generated_yaml_from_defaults(environ: dict[str, str]) -> None:
    p = prepared(["m", "--offload", "lmcache"], environ)
    assert p.written
    assert environ["LMCACHE_CONFIG_FILE"] == p.config_path
    assert read_yaml(p.config_path) == {
        "chunk_size": 256,
        "local_cpu": True,
        "max_local_cpu_size": 4.0,  # kvpanel's default CPU size, in LMCache's GB (GiB)
    }
    assert environ["LMCACHE_TRACK_USAGE"] == "false"
    assert p.vllm_args == ["--kv-transfer-config", CONNECTOR_JSON]
    assert json.loads(p.vllm_args[1]) == lmcache_mode.CONNECTOR
    assert any(p.config_path in note for note in p.notes)


def test_generated_yaml_from_flags(environ: dict[str, str]) -> None:
    environ["LMCACHE_TRACK_USAGE"] = "true"  # the user's choice is kept (setdefault)
    argv = ["m", "--offload", "lmcache", "--cpu-cache-gb", "2.5", "--chunk-size", "512"]
    p = prepared(argv, environ)
    values = read_yaml(p.config_path)
    assert values == {"chunk_size": 512, "local_cpu": True, "max_local_cpu_size": 2.5}
    assert int(values["max_local_cpu_size"] * GB) == int(2.5 * GB)
    assert environ["LMCACHE_TRACK_USAGE"] == "true"
    settings = parse_serve_args(["--cpu-cache-gb", "40"], env={}).settings
    assert lmcache_mode.config_values(settings)["max_local_cpu_size"] == pytest.approx(40.0)


def test_zero_cpu_cache_is_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ServeError, match="needs a CPU cache"):
        prepared(["m", "--offload", "lmcache", "--cpu-cache-gb", "0"], environ)


def test_users_file_without_a_size_and_zero_cpu_cache_is_refused(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    cfg = tmp_path / "lmcache.yaml"
    cfg.write_text("chunk_size: 256\nlocal_cpu: true\n")
    argv = ["m", "--offload", "lmcache", "--config", str(cfg), "--cpu-cache-gb", "0"]
    with pytest.raises(ServeError, match="needs a CPU cache"):
        prepared(argv, environ)


def test_users_file_is_passed_through(tmp_path: Path, environ: dict[str, str]) -> None:
    cfg = tmp_path / "lmcache.yaml"
    text = "chunk_size: 256\nlocal_cpu: true\nmax_local_cpu_size: 20\nsave_decode_cache: true\n"
    cfg.write_text(text)
    # --config ...
    opts = parse_serve_args(["m", "--offload", "lmcache", "--config", str(cfg)], env={})
    assert opts.warnings == []  # LMCache uses save_decode_cache: no "ignoring" warning here
    assert opts.settings.cpu_bytes == 20 * GB  # what the status line reports
    p = lmcache_mode.prepare(opts, environ)
    assert not p.written and p.config_path == str(cfg)
    assert environ["LMCACHE_CONFIG_FILE"] == str(cfg) and cfg.read_text() == text
    # ... or LMCACHE_CONFIG_FILE, as LMCache users set it.
    env = {"LMCACHE_CONFIG_FILE": str(cfg)}
    p = lmcache_mode.prepare(parse_serve_args(["m", "--offload", "lmcache"], env=env), env)
    assert not p.written and env["LMCACHE_CONFIG_FILE"] == str(cfg)
    # kvpanel's own mode still warns about keys it ignores.
    assert parse_serve_args(["m", "--config", str(cfg)], env={}).warnings


def test_users_file_missing_sizes_gets_them_in_a_copy(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    cfg = tmp_path / "lmcache.yaml"
    cfg.write_text("local_cpu: true\nsave_decode_cache: true\n")
    argv = ["m", "--offload", "lmcache", "--config", str(cfg), "--cpu-cache-gb", "3"]
    p = prepared(argv, environ)
    assert p.written and p.config_path != str(cfg)
    assert read_yaml(p.config_path) == {
        "local_cpu": True,
        "save_decode_cache": True,
        "chunk_size": 256,
        "max_local_cpu_size": 3.0,
    }
    assert cfg.read_text() == "local_cpu: true\nsave_decode_cache: true\n"  # untouched


def test_flag_and_file_disagreeing_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "lmcache.yaml"
    cfg.write_text("max_local_cpu_size: 20\n")
    with pytest.raises(ServeError, match="conflicting cpu_bytes"):
        parse_serve_args(["m", "--offload", "lmcache", "--config", str(cfg), "--cpu-cache-gb", "4"])


def test_kvpanel_form_file_is_refused(tmp_path: Path, environ: dict[str, str]) -> None:
    cfg = tmp_path / "kvpanel.yaml"
    cfg.write_text("tiers:\n  cpu: {size_gb: 2}\n")
    with pytest.raises(ServeError, match="kvpanel's YAML form"):
        prepared(["m", "--offload", "lmcache", "--config", str(cfg)], environ)


def test_disk_and_remote_tiers_are_refused() -> None:
    for extra in (["--disk-path", "/tmp/x"], ["--remote-url", "redis://127.0.0.1:1"]):
        with pytest.raises(ServeError, match="--offload lmcache has no disk or remote tier"):
            parse_serve_args(["m", "--offload", "lmcache", *extra], env={})


@pytest.mark.parametrize("mode", ["kvpanel", "native", "lmcache"])
@pytest.mark.parametrize(
    "flag",
    [
        ["--kv-transfer-config", CONNECTOR_JSON],
        [f"--kv-transfer-config={CONNECTOR_JSON}"],
        ["--kv_transfer_config", CONNECTOR_JSON],
        ["--kv-transfer-config.kv_connector", "LMCacheConnectorV1"],
    ],
)
def test_users_kv_transfer_config_conflicts(mode: str, flag: list[str]) -> None:
    with pytest.raises(ServeError, match=f"conflicts with --offload {mode}.*--offload none"):
        parse_serve_args(["m", "--offload", mode, *flag], env={})


def test_kv_transfer_config_passes_through_with_offload_none() -> None:
    opts = parse_serve_args(["m", "--offload", "none", "--kv-transfer-config", "{}"], env={})
    assert opts.vllm_args == ["--kv-transfer-config", "{}"]


def test_vllm_argv_has_lmcaches_connector_only(environ: dict[str, str]) -> None:
    from kvpanel.serve.main import _kv_config, _static
    from kvpanel.serve.server import vllm_argv

    opts = parse_serve_args(["m", "--offload", "lmcache", "--max-model-len", "4096"], env={})
    kv_config, opts = _kv_config(opts)  # sets os.environ (restored by the fixture)
    request_cleanup.append(os.environ["LMCACHE_CONFIG_FILE"])
    assert kv_config is None  # kvpanel's own connector is not configured
    assert opts.settings.control_socket is None
    argv = vllm_argv(opts, "m", kv_config)
    assert argv.count("--kv-transfer-config") == 1
    assert argv[argv.index("--kv-transfer-config") + 1] == CONNECTOR_JSON
    assert "kvpanel" not in " ".join(argv)  # no kvpanel spec module anywhere
    assert argv[argv.index("--max-model-len") + 1] == "4096"
    assert os.environ["LMCACHE_TRACK_USAGE"] == "false"
    assert read_yaml(os.environ["LMCACHE_CONFIG_FILE"])["chunk_size"] == 256
    static = _static(opts, "m", demo=False)
    assert static["model"]["offload"] == "lmcache"
    assert static["config"]["cpu_bytes"] == 4 * GB


def test_hashseed_warning() -> None:
    assert lmcache_mode.hashseed_warning({}) == lmcache_mode.HASHSEED_WARNING
    assert "PYTHONHASHSEED" in lmcache_mode.HASHSEED_WARNING
    assert lmcache_mode.hashseed_warning({"PYTHONHASHSEED": "0"}) is None


def test_missing_lmcache_exits_2_in_process(
    tmp_path: Path, lmcache_missing: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from kvpanel.serve.main import serve_main

    state = tmp_path / "state"
    rc = serve_main(["m", "--no-ui", "--offload", "lmcache", "--state-dir", str(state)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [f"kvpanel serve: error: {lmcache_mode.INSTALL_HINT}"]
    assert "--offload lmcache needs the lmcache package (pip install lmcache)" in err[0]
    assert not state.exists()


def test_serve_with_lmcache_found_warns_and_writes_the_config(
    tmp_path: Path,
    lmcache_found: None,
    environ: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The whole path up to vLLM: a state dir below a file stops it right after the config."""
    from kvpanel.serve.main import serve_main

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    monkeypatch.delenv("LMCACHE_CONFIG_FILE", raising=False)
    (tmp_path / "f").write_text("")
    argv = ["m", "--no-ui", "--offload", "lmcache", "--cpu-cache-gb", "1.5"]
    rc = serve_main([*argv, "--state-dir", str(tmp_path / "f" / "state")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[0] == f"kvpanel serve: warning: {lmcache_mode.HASHSEED_WARNING}"
    path = os.environ["LMCACHE_CONFIG_FILE"]
    request_cleanup.append(path)
    assert err[1].startswith(f"kvpanel serve: LMCache config: {path}")
    assert err[-1].startswith("kvpanel serve: error: ")
    assert read_yaml(path) == {"chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 1.5}
    assert os.environ["LMCACHE_TRACK_USAGE"] == "false"


@pytest.mark.skipif(LMCACHE_INSTALLED, reason="lmcache is installed here")
def test_missing_lmcache_exits_2_as_a_command(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "kvpanel.cli", "serve", "no-such-model", "--no-ui"]
    argv += ["--offload", "lmcache", "--state-dir", str(tmp_path / "state")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kvpanel serve: error: --offload lmcache needs the lmcache package")
    assert "pip install lmcache" in lines[0]
    assert proc.stdout == "" and not (tmp_path / "state").exists()
