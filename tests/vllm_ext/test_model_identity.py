"""The fingerprint covers everything that changes the KV: weight content (anywhere in any file),
the config after overrides, dtypes, quantization, revision; unknown content keeps shared tiers off.
"""

from __future__ import annotations

import json
import os
from io import BufferedReader
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kvpanel.serve.options import parse_serve_args
from kvpanel.settings import CacheSettings, ConfigError
from kvpanel.vllm_ext import weights_digest
from kvpanel.vllm_ext.model_identity import UnknownModelContentError, weights_identity
from kvpanel.vllm_ext.spec import KvpanelOffloadingSpec, fingerprint_for
from kvpanel.vllm_ext.weights_digest import DigestCache, model_digest

MiB = 1 << 20


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "digest-cache" / "d.json"
    monkeypatch.setenv("KVPANEL_DIGEST_CACHE", str(path))
    weights_digest._SHARED.clear()
    return path


def checkout(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def rewrite_middle(path: Path) -> None:
    """Change one byte in the middle, keep the size (and so the head and tail)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


BIG = os.urandom(1 * MiB)


@pytest.mark.parametrize(
    "rel",
    [
        "model.safetensors",
        "sub/pytorch_model.bin",
        "weights.pth",
        "ckpt/model.ckpt",
        "arrays.npz",
        "consolidated.00.pt",
    ],
)
def test_change_in_the_middle_of_any_weight_file_changes_identity(tmp_path, rel):
    model = checkout(tmp_path / "m", {"config.json": b"{}", rel: BIG})
    before = weights_identity(str(model))
    rewrite_middle(model / rel)
    assert weights_identity(str(model)) != before


def test_single_gguf_file_is_hashed_by_content(tmp_path):
    gguf = tmp_path / "tiny.Q4_K_M.gguf"
    gguf.write_bytes(BIG)
    before = weights_identity(str(gguf))
    assert before is not None and before.startswith("tiny.Q4_K_M.gguf@")
    rewrite_middle(gguf)
    assert weights_identity(str(gguf)) != before


def test_docs_tokenizer_and_hidden_files_do_not_change_identity(tmp_path):
    model = checkout(tmp_path / "m", {"config.json": b"{}", "model.safetensors": BIG})
    before = weights_identity(str(model))
    checkout(
        model,
        {
            "README.md": b"new docs",
            "tokenizer.json": b"{}",
            "tokenizer_config.json": b"{}",
            ".git/HEAD": b"ref",
            "LICENSE": b"x",
        },
    )
    assert weights_identity(str(model)) == before
    checkout(model, {"extra/adapter_weights.bin": b"w"})  # unknown files are hashed
    assert weights_identity(str(model)) != before


def test_symlinked_subfolders_are_followed_once(tmp_path):
    model = checkout(tmp_path / "m", {"config.json": b"{}"})
    shards = checkout(tmp_path / "shards", {"w.safetensors": BIG})
    (model / "weights").symlink_to(shards)
    (shards / "loop").symlink_to(model)
    before = weights_identity(str(model))
    rewrite_middle(shards / "w.safetensors")
    assert weights_identity(str(model)) != before


def test_a_copy_elsewhere_keeps_its_identity(tmp_path):
    a = checkout(tmp_path / "a" / "llama", {"config.json": b"{}", "w.safetensors": BIG})
    b = checkout(tmp_path / "b" / "llama", {"config.json": b"{}", "w.safetensors": BIG})
    assert weights_identity(str(a)) == weights_identity(str(b))


class CountingHasher:
    def __init__(self) -> None:
        self.files = 0

    def __call__(self, f: BufferedReader) -> str:
        self.files += 1
        return weights_digest._hash_file(f)


def test_digest_cache_skips_reads_until_the_file_changes(tmp_path, digest_cache):
    model = checkout(tmp_path / "m", {"config.json": b"{}", "w.safetensors": BIG})
    hasher = CountingHasher()
    first = model_digest(model, DigestCache(), hasher)
    assert hasher.files == 2 and digest_cache.exists()

    hasher.files = 0  # a restart: a new cache object reads the JSON file
    assert model_digest(model, DigestCache(), hasher) == first
    assert hasher.files == 0

    st = (model / "w.safetensors").stat()
    os.utime(model / "w.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert model_digest(model, DigestCache(), hasher) == first
    assert hasher.files == 1  # mtime changed: re-read, same content

    with (model / "w.safetensors").open("ab") as f:
        f.write(b"x")
    hasher.files = 0
    assert model_digest(model, DigestCache(), hasher) != first
    assert hasher.files == 1


def test_corrupt_or_unwritable_digest_cache_means_rehashing(tmp_path, digest_cache, monkeypatch):
    model = checkout(tmp_path / "m", {"config.json": b"{}", "w.safetensors": BIG})
    expected = model_digest(model, DigestCache())
    digest_cache.write_text('{"' + str((model / "w.safetensors").resolve()) + '": [1, 2')
    hasher = CountingHasher()
    assert model_digest(model, DigestCache(), hasher) == expected
    assert hasher.files == 2
    # A stat-matching entry with a forged digest type is ignored too.
    digest_cache.write_text(json.dumps({str((model / "w.safetensors").resolve()): {"stat": 1}}))
    assert model_digest(model, DigestCache()) == expected
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KVPANEL_DIGEST_CACHE", str(blocker / "sub" / "d.json"))
    assert model_digest(model, DigestCache()) == expected  # cannot write: still answers


# --- the fingerprint, from vLLM-shaped config objects -------------------------------------------


class HfConfig:
    def __init__(self, **values: Any) -> None:
        self.values = {"_name_or_path": "/somewhere", "rope_theta": 10000.0, **values}

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)


def engine_config(**changes: Any) -> SimpleNamespace:
    model = {
        "hf_config": HfConfig(),
        "dtype": "torch.bfloat16",
        "quantization": None,
        "revision": None,
    }
    cache = {"cache_dtype": "auto"}
    for key, value in changes.items():
        (cache if key in ("cache_dtype", "prefix_caching_hash_algo") else model)[key] = value
    return SimpleNamespace(
        model_config=SimpleNamespace(**model),
        cache_config=SimpleNamespace(**cache),
        load_config=SimpleNamespace(load_format="safetensors", download_dir=None),
        lora_config=changes.get("lora_config"),
    )


def offloading_config(name: str, settings: CacheSettings, kv_dtype: str = "bfloat16") -> Any:
    return SimpleNamespace(
        model=SimpleNamespace(name=name, dtype=kv_dtype),
        groups=(SimpleNamespace(tokens_per_block=128, layer_names=("l0", "l1"), group_id=0),),
        cache=SimpleNamespace(tokens_per_hash=128, blocks_per_chunk=2),
        parallel=SimpleNamespace(tp_size=1, pp_size=1, world_size=1, rank=0),
        worker_kv_bytes_per_block=65536,
        kv_cache_layout="HND",
        extra_config=settings.to_extra_config(),
        enable_kv_cache_events=False,
        engine_id="test",
    )


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return checkout(tmp_path / "llama", {"config.json": b"{}", "model.safetensors": BIG})


@pytest.mark.parametrize(
    "change",
    [
        {"quantization": "fp8"},
        {"dtype": "torch.float16"},
        {"cache_dtype": "fp8_e4m3"},
        {"revision": "0123abcd"},
        {"hf_config": HfConfig(rope_theta=1e6)},
        {"lora_config": SimpleNamespace(max_lora_rank=8)},
    ],
    ids=["quantization", "model-dtype", "kv-dtype", "revision", "hf-override", "lora"],
)
@pytest.mark.parametrize("model_id", [None, "my-llama"])
def test_each_kv_changing_engine_setting_changes_the_fingerprint(model_dir, change, model_id):
    settings = CacheSettings(model_id=model_id)
    base, _ = fingerprint_for(
        offloading_config(str(model_dir), settings), settings, engine_config()
    )
    other, _ = fingerprint_for(
        offloading_config(str(model_dir), settings), settings, engine_config(**change)
    )
    assert base.digest() != other.digest()


def test_model_dtype_counts_when_the_kv_dtype_is_the_same(model_dir):
    # vLLM's OffloadingConfig only says "fp8_e4m3" here: the model dtype must come from elsewhere.
    s = CacheSettings()
    a, _ = fingerprint_for(offloading_config(str(model_dir), s, "fp8_e4m3"), s, engine_config())
    b, _ = fingerprint_for(
        offloading_config(str(model_dir), s, "fp8_e4m3"), s, engine_config(dtype="torch.float16")
    )
    assert a.digest() != b.digest()


def test_where_the_config_was_read_from_does_not_matter(model_dir):
    s = CacheSettings()
    a, _ = fingerprint_for(offloading_config(str(model_dir), s), s, engine_config())
    moved = engine_config(hf_config=HfConfig(_name_or_path="/elsewhere"))
    b, _ = fingerprint_for(offloading_config(str(model_dir), s), s, moved)
    assert a.digest() == b.digest()


# --- the spec: shared tiers refused where the content is unknown ----------------------------------


def build_spec(name: str, settings: CacheSettings, vllm_config: Any) -> KvpanelOffloadingSpec:
    """Built as vLLM builds it, with ``vllm_config`` on the caller's stack (see compat)."""
    return KvpanelOffloadingSpec(offloading_config(name, settings))


def test_unresolvable_hub_name_refuses_disk_tier_and_model_id_allows_it(tmp_path):
    vllm_config = engine_config()
    vllm_config.load_config.download_dir = str(tmp_path / "empty-hub")
    disk = CacheSettings(disk_path=str(tmp_path / "disk"), disk_bytes=MiB)
    with pytest.raises(UnknownModelContentError, match="--model-id") as err:
        build_spec("someorg/not-downloaded", disk, vllm_config)
    assert "\n" not in str(err.value)
    with pytest.raises(UnknownModelContentError):
        build_spec(
            "someorg/not-downloaded", CacheSettings(remote_url="redis://127.0.0.1:1"), vllm_config
        )
    cpu_only = build_spec("someorg/not-downloaded", CacheSettings(), vllm_config)
    # CPU tier only: private to the process, so the weights are not read at all.
    assert cpu_only.fingerprint.model == "process:someorg/not-downloaded"
    named = build_spec(
        "someorg/not-downloaded", CacheSettings(**{**_fields(disk), "model_id": "x@1"}), vllm_config
    )
    assert named.settings.disk_path == disk.disk_path
    assert named.fingerprint.model == "id:x@1"


def _fields(s: CacheSettings) -> dict[str, Any]:
    return {"disk_path": s.disk_path, "disk_bytes": s.disk_bytes}


def test_hub_name_in_the_local_cache_is_hashed_at_its_revision(tmp_path):
    hub = tmp_path / "hub"  # vLLM's --download-dir: the hub cache kvpanel looks in
    repo = hub / "models--someorg--tiny"
    for rev, commit in (("main", "a" * 40), ("v2", "b" * 40)):
        checkout(
            repo / "snapshots" / commit, {"config.json": b"{}", "w.safetensors": os.urandom(4096)}
        )
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(commit)
    disk = CacheSettings(disk_path=str(tmp_path / "disk"), disk_bytes=MiB)
    main_config, v2_config = engine_config(), engine_config(revision="v2")
    for config in (main_config, v2_config):
        config.load_config.download_dir = str(hub)
    main = build_spec("someorg/tiny", disk, main_config)
    v2 = build_spec("someorg/tiny", disk, v2_config)
    assert main.fingerprint.model.startswith("tiny@")
    assert main.fingerprint.digest() != v2.fingerprint.digest()
    assert main.settings.disk_path == disk.disk_path


def test_lora_keeps_only_the_cpu_tier(model_dir, tmp_path):
    disk = CacheSettings(disk_path=str(tmp_path / "disk"), disk_bytes=MiB, remote_url="redis://h:1")
    spec = build_spec(str(model_dir), disk, engine_config(lora_config=SimpleNamespace()))
    assert spec.settings.disk_path is None and spec.settings.remote_url is None
    assert spec.settings.cpu_bytes == disk.cpu_bytes


def test_engine_config_not_found_refuses_shared_tiers(model_dir, tmp_path):
    disk = CacheSettings(disk_path=str(tmp_path / "disk"), disk_bytes=MiB)
    with pytest.raises(ConfigError, match="engine config"):
        KvpanelOffloadingSpec(offloading_config(str(model_dir), disk))


def test_serve_passes_model_id_through(tmp_path):
    opts = parse_serve_args(["org/m", "--model-id", "org/m@abc", "--disk-path", str(tmp_path)])
    assert opts.settings.model_id == "org/m@abc"
    assert "--model-id" not in opts.vllm_args


@pytest.mark.parametrize("seed", ["unset", "kvpanel's", "the operator's"])
def test_a_weak_block_hash_keeps_shared_tiers_off_unless_the_operator_chose_the_seed(
    model_dir, tmp_path, monkeypatch, seed
):
    # xxhash block hashes can be collided on purpose by whoever knows the seed: with a random
    # or public seed, disk and Redis would keep a forged prompt's KV for everyone.
    from kvpanel.vllm_ext import compat

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    compat.ensure_deterministic_block_hashes("xxhash")
    assert "PYTHONHASHSEED" not in os.environ  # vLLM draws a random seed for xxhash
    if seed == "kvpanel's":  # e.g. the flag came from a vLLM config file serve did not read
        compat.ensure_deterministic_block_hashes("sha256")
        assert os.environ["PYTHONHASHSEED"] == "0"
    elif seed == "the operator's":
        monkeypatch.setenv("PYTHONHASHSEED", "271828")
    disk = CacheSettings(disk_path=str(tmp_path / "disk"), disk_bytes=MiB, remote_url="redis://h:1")
    weak = build_spec(str(model_dir), disk, engine_config(prefix_caching_hash_algo="xxhash"))
    strong = build_spec(str(model_dir), disk, engine_config(prefix_caching_hash_algo="sha256"))
    assert strong.settings.disk_path == disk.disk_path
    if seed == "the operator's":
        assert weak.settings.disk_path == disk.disk_path
        assert weak.settings.remote_url == disk.remote_url
    else:
        assert weak.settings.disk_path is None and weak.settings.remote_url is None
        assert weak.settings.cpu_bytes == disk.cpu_bytes
