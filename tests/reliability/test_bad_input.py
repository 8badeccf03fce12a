"""Bad configuration: one clear stderr line, exit code 2, nothing created (no vLLM started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvpanel.serve.options import parse_serve_args


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kvpanel.cli", "serve", "--no-ui"]
    argv += ["--state-dir", str(tmp_path / "state"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def assert_refused(proc: subprocess.CompletedProcess[str], tmp_path: Path, message: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kvpanel serve: error: ") and message in lines[0], lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "state").exists(), "state dir created"
    assert not (tmp_path / "disk").exists(), "disk dir created"


YAML_CASES = {
    "invalid-yaml": ("chunk_size: [256\n", "invalid YAML at line"),
    "top-level-list": ("- 1\n- 2\n", "top level must be a mapping"),
    "negative-yaml-size": ("max_local_disk_size: -5\nlocal_disk: DISK\n", "must not be negative"),
    "absurd-yaml-size": ("max_local_cpu_size: 1.0e+12\n", "absurdly large"),
    "nan-yaml-size": ("max_local_cpu_size: .nan\n", "finite"),
    "inf-yaml-size": ("max_local_cpu_size: .inf\n", "finite"),
    "string-size": ("max_local_cpu_size: lots\n", "must be a number of GB"),
    "bool-local-cpu": ("local_cpu: maybe\n", "local_cpu must be true or false"),
    "unknown-tier": ("tiers:\n  tape: {size_gb: 1}\n", "unknown tier 'tape'"),
    "unknown-tier-key": ("tiers:\n  disk: {path: DISK, sizee_gb: 1}\n", "unknown key(s) sizee_gb"),
    "zero-chunk": ("chunk_size: 0\n", "chunk_size must be a positive integer"),
    "bad-remote": ("remote_url: http://example.invalid\n", "is not supported"),
    "disk-size-no-path": ("max_local_disk_size: 1\n", "no disk path"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_bad_yaml_is_one_line_exit_2_nothing_created(tmp_path, case):
    text, message = YAML_CASES[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text.replace("DISK", str(tmp_path / "disk")))
    assert_refused(serve(tmp_path, "--config", str(cfg)), tmp_path, message)


FLAG_CASES = {
    "negative-cpu": (["--cpu-cache-gb", "-1"], "must not be negative"),
    "negative-disk": (["--disk-path", "DISK", "--disk-cache-gb", "-0.5"], "must not be negative"),
    "absurd-cpu": (["--cpu-cache-gb", "1e7"], "absurdly large"),
    "absurd-disk": (["--disk-path", "DISK", "--disk-cache-gb", "5e6"], "absurdly large"),
    "nan-cpu": (["--cpu-cache-gb", "nan"], "must be a finite number"),
    "inf-disk": (["--disk-path", "DISK", "--disk-cache-gb", "inf"], "must be a finite number"),
    "zero-chunk": (["--chunk-size", "0"], "chunk_tokens must be a positive integer"),
    "huge-chunk": (["--chunk-size", "99999999"], "too large"),
    "disk-size-no-path": (["--disk-cache-gb", "1"], "no disk path"),
    "bad-remote": (["--remote-url", "memcached://h:1"], "is not supported"),
    "no-status-interval": (["--status-interval", "0"], "must be positive"),
    "control-host-alone": (["--control-host", "0.0.0.0"], "--control-host needs --control-port"),
    "native-with-disk": (["--offload", "native", "--disk-path", "DISK"], "has no disk"),
    "missing-config": (["--config", "NOFILE"], "cannot read config file"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flags_are_one_line_exit_2_nothing_created(tmp_path, case):
    args, message = FLAG_CASES[case]
    args = [a.replace("DISK", str(tmp_path / "disk")) for a in args]
    args = [a.replace("NOFILE", str(tmp_path / "nope.yaml")) for a in args]
    assert_refused(serve(tmp_path, *args), tmp_path, message)


def test_disk_path_that_is_a_file(tmp_path):
    f = tmp_path / "disk"
    f.write_text("not a dir")
    proc = serve(tmp_path, "--disk-path", str(f), "--disk-cache-gb", "1")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "exists and is not a directory" in lines[0] and str(f) in lines[0]
    assert f.read_text() == "not a dir" and not (tmp_path / "state").exists()


def test_disk_path_below_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "disk"
    proc = serve(tmp_path, "--disk-path", str(target), "--disk-cache-gb", "1")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "is not a directory" in lines[0]
    assert not (tmp_path / "state").exists()


def test_unwritable_disk_path(tmp_path, tmpfs):
    ro = tmpfs("1m", ro=True)  # root ignores permission bits; a read-only mount it cannot
    target = ro / "cache" / "kv"
    proc = serve(tmp_path, "--disk-path", str(target), "--disk-cache-gb", "1")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "is not writable" in lines[0] and str(target) in lines[0]
    assert not (ro / "cache").exists() and not (tmp_path / "state").exists()


def test_unknown_lmcache_keys_are_accepted_with_a_warning(tmp_path):
    """LMCache files carry keys kvpanel has no use for: warn (naming them), do not refuse."""
    cfg = tmp_path / "lmcache.yaml"
    cfg.write_text(
        "chunk_size: 256\nlocal_cpu: true\nmax_local_cpu_size: 2\n"
        "save_decode_cache: true\nenable_p2p: false\n"
    )
    opts = parse_serve_args(["--config", str(cfg)], env={})
    assert opts.settings.cpu_bytes == 2 << 30
    assert len(opts.warnings) == 2
    assert any("'save_decode_cache'" in w for w in opts.warnings)
    assert any("'enable_p2p'" in w for w in opts.warnings)
    # Through the command: the warning reaches stderr before any later error. A state dir
    # below a file makes the run stop right after the warnings, before vLLM is imported.
    (tmp_path / "f").write_text("")
    argv = [sys.executable, "-m", "kvpanel.cli", "serve", "--no-ui", "--config", str(cfg)]
    proc = subprocess.run(
        [*argv, "--state-dir", str(tmp_path / "f" / "state")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    # Only the file's warnings: without a model the demo engine may add its own (KV sizing).
    warnings = [ln for ln in lines if ln.startswith("kvpanel serve: warning: ") and str(cfg) in ln]
    assert len(warnings) == 2 and "'save_decode_cache'" in warnings[0] + warnings[1]
    assert lines[-1].startswith("kvpanel serve: error: ")
