from pathlib import Path

import pytest

from kvpanel.config_file import load_config_file
from kvpanel.settings import GB, CacheSettings, ConfigError

SEED_YAML = "chunk_size: 256\nlocal_cpu: True\nmax_local_cpu_size: 80\n"


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_seed_lmcache_yaml_unchanged(tmp_path):
    cf = load_config_file(write(tmp_path, SEED_YAML))
    assert cf.values == {"chunk_tokens": 256, "cpu_bytes": 80 * GB}
    assert cf.warnings == []
    CacheSettings(**cf.values).validated()


def test_lmcache_disk_and_remote(tmp_path):
    d = tmp_path / "disk"
    cf = load_config_file(
        write(
            tmp_path,
            f"local_disk: file://{d}\nmax_local_disk_size: 2\n"
            "remote_url: redis://127.0.0.1:6379\nsave_decode_cache: false\n",
        )
    )
    assert cf.values["disk_path"] == str(d)
    assert cf.values["disk_bytes"] == 2 * GB
    assert cf.values["remote_url"] == "redis://127.0.0.1:6379"
    assert any("save_decode_cache" in w for w in cf.warnings)


def test_local_cpu_false_disables_cpu(tmp_path):
    cf = load_config_file(write(tmp_path, "local_cpu: false\nmax_local_cpu_size: 5\n"))
    assert cf.values["cpu_bytes"] == 0


def test_kvpanel_tiers_form(tmp_path):
    text = f"tiers:\n  cpu: {{size_gb: 1.5}}\n  disk: {{path: {tmp_path}, size_gb: 3}}\n"
    cf = load_config_file(write(tmp_path, text))
    want = {"cpu_bytes": int(1.5 * GB), "disk_path": str(tmp_path), "disk_bytes": 3 * GB}
    assert cf.values == want


@pytest.mark.parametrize(
    "text, message",
    [
        ("tiers:\n  tape: {size_gb: 1}\n", "unknown tier 'tape'"),
        ("max_local_cpu_size: -3\n", "must not be negative"),
        ("chunk_size: abc\n", "chunk_size must be a positive integer"),
        ("chunk_size: [1, 2\n", "invalid YAML at line"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("tiers:\n  cpu: {size_gb: 1, color: red}\n", "unknown key"),
    ],
)
def test_bad_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config_file(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "nope.yaml")


def test_a_conflict_between_flag_and_file_is_told_in_gib(tmp_path: Path) -> None:
    from kvpanel.serve.options import ServeError, parse_serve_args

    cfg = tmp_path / "lmcache.yaml"
    cfg.write_text("max_local_cpu_size: 80\n")
    with pytest.raises(ServeError) as e:
        parse_serve_args(["--config", str(cfg), "--cpu-cache-gb", "2.5"], env={})
    assert (
        str(e.value) == f"conflicting cpu_bytes: 2.5 GiB from the command line but 80 GiB in {cfg}"
    )
