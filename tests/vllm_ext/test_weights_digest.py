"""Two processes that start together hash the weights once: the second waits for the first's
digests (vLLM's scheduler and its rank-0 worker under TP both fingerprint the model)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from io import BufferedReader
from pathlib import Path

from kvpanel.vllm_ext import weights_digest
from kvpanel.vllm_ext.weights_digest import DigestCache, model_digest

_CHILD = """
import sys
from pathlib import Path
from kvpanel.vllm_ext import weights_digest
from kvpanel.vllm_ext.weights_digest import DigestCache, model_digest
read = []
def counting(f):
    read.append(f.name)
    return weights_digest._hash_file(f)
print(model_digest(Path(sys.argv[1]), DigestCache(Path(sys.argv[2])), counting), len(read))
"""


def test_a_second_process_waits_for_the_first_hash_and_reads_nothing(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "w.safetensors").write_bytes(os.urandom(1 << 20))
    cache_path = tmp_path / "cache" / "d.json"
    inside, release = threading.Event(), threading.Event()

    def slow(f: BufferedReader) -> str:
        inside.set()  # this process holds the hashing lock now
        release.wait(30)
        return weights_digest._hash_file(f)

    result: list[str] = []
    first = threading.Thread(
        target=lambda: result.append(model_digest(model, DigestCache(cache_path), slow))
    )
    first.start()
    assert inside.wait(30)
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(model), str(cache_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        child.wait(timeout=2)  # it must be waiting on the lock, not hashing on its own
        raise AssertionError(f"the second process did not wait: {child.stdout.read()}")  # type: ignore[union-attr]
    except subprocess.TimeoutExpired:
        pass
    release.set()
    first.join(30)
    out, _ = child.communicate(timeout=60)
    digest, files_read = out.split()
    assert digest == result[0]
    assert files_read == "0"


def test_without_a_writable_cache_directory_it_hashes_without_a_lock(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"x" * 4096)
    blocker = tmp_path / "file"
    blocker.write_text("")
    unwritable = DigestCache(blocker / "sub" / "d.json")
    assert model_digest(model, unwritable) == model_digest(model, DigestCache(tmp_path / "d.json"))


def test_a_dangling_link_in_the_checkout_is_left_out_not_an_error(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"x" * 4096)
    cache = DigestCache(tmp_path / "d.json")
    before = model_digest(model, cache)
    (model / "extra.bin").symlink_to(tmp_path / "nowhere")  # no loader can read it either
    assert model_digest(model, cache) == before
