import pytest

from kvpanel.settings import GB, CacheSettings, ConfigError
from kvpanel.vllm_ext import kv_transfer_config


def test_defaults_validate():
    s = CacheSettings().validated()
    assert s.cpu_bytes == 4 * GB and s.chunk_tokens == 256


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cpu_bytes": -1}, "cpu_bytes must not be negative"),
        ({"disk_bytes": -5, "disk_path": "/tmp"}, "disk_bytes must not be negative"),
        ({"cpu_bytes": 1 << 60}, "absurdly large"),
        ({"chunk_tokens": 0}, "chunk_tokens must be a positive integer"),
        ({"disk_bytes": GB}, "no disk path"),
        ({"remote_url": "http://x"}, "not supported"),
    ],
)
def test_bad_values_raise_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CacheSettings(**kwargs).validated()


def test_disk_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        CacheSettings(disk_path=str(f), disk_bytes=GB).validated()


def test_unwritable_disk_path_creates_nothing():
    # /proc refuses new entries even for root, which passes every os.access check.
    with pytest.raises(ConfigError, match="not writable"):
        CacheSettings(disk_path="/proc/kvpanel-cache/x", disk_bytes=GB).validated()


def test_nonexistent_disk_path_is_not_created_by_validation(tmp_path):
    target = tmp_path / "a" / "b"
    CacheSettings(disk_path=str(target), disk_bytes=GB).validated()
    assert not (tmp_path / "a").exists()


def test_extra_config_round_trip(tmp_path):
    s = CacheSettings(cpu_bytes=GB, disk_path=str(tmp_path), disk_bytes=2 * GB).validated()
    assert CacheSettings.from_extra_config(s.to_extra_config()) == s


def test_unknown_extra_config_key():
    with pytest.raises(ConfigError, match="unknown kvpanel setting"):
        CacheSettings.from_extra_config({"kvpanel": {"cpu_bytes": 1, "tape_bytes": 2}})


def test_kv_transfer_config_validates_before_vllm():
    with pytest.raises(ConfigError):
        kv_transfer_config(CacheSettings(cpu_bytes=-1))
    cfg = kv_transfer_config(CacheSettings(cpu_bytes=GB))
    extra = cfg["kv_connector_extra_config"]
    assert cfg["kv_connector"] == "OffloadingConnector"
    assert extra["spec_module_path"] == "kvpanel.vllm_ext.spec"
    assert extra["block_size"] == 256


def test_cache_secret_from_env_and_file(tmp_path):
    from kvpanel.settings import cache_secret_from_env

    secret = "x" * 16
    assert cache_secret_from_env({}) is None
    assert cache_secret_from_env({"KVPANEL_CACHE_SECRET": ""}) is None
    assert cache_secret_from_env({"KVPANEL_CACHE_SECRET": secret}) == secret.encode()
    f = tmp_path / "secret"
    f.write_bytes(b"y" * 20 + b"\n")  # a trailing newline (echo, editors) is not part of it
    f.chmod(0o600)
    assert cache_secret_from_env({"KVPANEL_CACHE_SECRET_FILE": str(f)}) == b"y" * 20
    bad = [
        ({"KVPANEL_CACHE_SECRET": "short"}, "at least 16 bytes"),
        ({"KVPANEL_CACHE_SECRET": secret, "KVPANEL_CACHE_SECRET_FILE": str(f)}, "not both"),
        ({"KVPANEL_CACHE_SECRET_FILE": str(tmp_path / "none")}, "cannot read"),
        ({"KVPANEL_CACHE_SECRET_FILE": str(tmp_path)}, "not a regular file"),
    ]
    for env, message in bad:
        with pytest.raises(ConfigError, match=message) as e:
            cache_secret_from_env(env)
        assert secret not in str(e.value)
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        cache_secret_from_env({"KVPANEL_CACHE_SECRET_FILE": str(f)})


def test_cache_secret_is_not_in_the_logged_vllm_config():
    # vLLM logs kv_connector_extra_config: the secret must reach the engine another way.
    assert "secret" not in str(kv_transfer_config(CacheSettings()))
