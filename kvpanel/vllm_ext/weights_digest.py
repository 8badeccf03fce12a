"""Content digest of a model checkout (a directory or one file such as a GGUF), cached on disk.

KV bytes are a function of the weights, so the fingerprint that keys shared tiers must cover every
byte a loader may read. Reading 60 GB at every start is not acceptable either, so each file's
SHA-256 is remembered in a small JSON file, keyed by the file's resolved path and its
(size, mtime_ns, inode, ctime_ns): any rewrite changes at least ctime, which no user can set back.

Processes that start together (vLLM's scheduler and its rank-0 worker under tensor parallelism,
two replicas on one host) hash one after the other under an ``flock`` beside the JSON file: the
second finds the first's digests there instead of reading the weights once more.

Primitives:
    model_digest(path)   - hex digest of a file or of a directory tree's content
    DigestCache          - the JSON digest cache (a corrupt or unwritable file means re-hashing)
    digest_cache_path()  - $KVPANEL_DIGEST_CACHE, else <XDG cache>/kvpanel/weight-digests.json

Imports no vLLM.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BufferedReader
from pathlib import Path
from typing import Any

log = logging.getLogger("kvpanel")

_READ_BYTES = 8 << 20
# Files that cannot change the KV and are left out, so that e.g. a README edit keeps the cache.
# Everything else is hashed, whatever its name: loaders accept .safetensors, .bin, .pt, .pth,
# .ckpt, .gguf, .npz, sharded indexes, custom code (*.py) and configs, and a list of weight
# suffixes would miss the next format. The tokenizer is left out on purpose: the cache is keyed
# by token ids (vLLM's block hashes), not text, and a tokenizer cannot change the KV of given
# token ids; a tokenizer that maps text to other ids simply produces other keys.
_IGNORED_NAMES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.json",
        "chat_template.jinja",
        "generation_config.json",  # sampling defaults: changes outputs, never the KV
    }
)
_IGNORED_SUFFIXES = (".md", ".jinja", ".png", ".jpg", ".jpeg", ".gif", ".svg")
_IGNORED_PREFIXES = ("README", "LICENSE", "LICENCE", "NOTICE", "USE_POLICY")
_MAX_CACHE_ENTRIES = 10_000
_HASH_THREADS = 4  # hashlib releases the GIL: files hash in parallel, I/O permitting


def is_ignored(rel: Path) -> bool:
    """Whether a file (path relative to the checkout) cannot change the KV.

    Hidden files and folders (.git, .cache/huggingface, .gitattributes) are never read by a
    model loader."""
    if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
        return True  # bytecode changes with the Python version, never the weights
    name = rel.name
    if name in _IGNORED_NAMES or name.startswith(_IGNORED_PREFIXES):
        return True
    return name.lower().endswith(_IGNORED_SUFFIXES)


def digest_cache_path() -> Path:
    explicit = os.environ.get("KVPANEL_DIGEST_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "kvpanel" / "weight-digests.json"


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _hash_file(f: BufferedReader) -> str:
    # A readinto loop, not hashlib.file_digest (3.11+): the same speed, and Python 3.10 works.
    h = hashlib.sha256()
    buf = bytearray(_READ_BYTES)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()


class DigestCache:
    """resolved path -> (stat key, sha256) in one JSON file; every failure is a cache miss."""

    def __init__(self, path: Path | None = None):
        self.path = path or digest_cache_path()
        self._lock = threading.Lock()
        self._entries: dict[str, Any] = self._load()
        self._dirty = False

    def reload(self) -> None:
        """Take in what another process wrote since (its entries win only where ours are none)."""
        with self._lock:
            self._entries = {**self._load(), **self._entries}

    @contextlib.contextmanager
    def hashing(self) -> Iterator[None]:
        """Held while this process reads weight files: another process hashing the same cache
        waits, then finds the digests. Without a writable cache directory there is no lock,
        only the cost of hashing twice."""
        fd = -1
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd >= 0:
                os.close(fd)  # releases the lock

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, path: str, st: os.stat_result) -> str | None:
        entry = self._entries.get(path)
        if (
            isinstance(entry, dict)
            and entry.get("stat") == _stat_key(st)
            and isinstance(entry.get("sha256"), str)
        ):
            return str(entry["sha256"])
        return None

    def put(self, path: str, st: os.stat_result, digest: str) -> None:
        with self._lock:
            self._entries[path] = {"stat": _stat_key(st), "sha256": digest}
            self._dirty = True

    def save(self) -> None:
        """Write atomically; a read-only or missing home only costs a re-hash next time."""
        if not self._dirty:
            return
        entries = self._entries
        if len(entries) > _MAX_CACHE_ENTRIES:  # oldest first (insertion order)
            entries = dict(list(entries.items())[-_MAX_CACHE_ENTRIES:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".weight-digests.")
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError as e:
            log.warning("kvpanel: cannot write the weight digest cache %s: %s", self.path, e)
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)


_SHARED: dict[Path, DigestCache] = {}


def _shared_cache() -> DigestCache:
    """One cache per file per process: the scheduler and the worker side both fingerprint."""
    path = digest_cache_path()
    if path not in _SHARED:
        _SHARED[path] = DigestCache(path)
    return _SHARED[path]


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative name, path) of every file that may carry weights, in a fixed order.

    Symlinks are followed (a hub snapshot is made of links into its blob store)."""
    if root.is_file():
        yield root.name, root
        return
    seen: set[tuple[int, int]] = set()  # a symlink loop must not walk forever
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(root)
            if not is_ignored(rel):
                yield rel.as_posix(), path


def model_digest(
    path: str | Path,
    cache: DigestCache | None = None,
    hash_file: Callable[[BufferedReader], str] = _hash_file,
) -> str:
    """SHA-256 over (relative name, size, content digest) of every relevant file under ``path``.

    Each file's content digest comes from ``cache`` when its stat key is unchanged; otherwise
    the file is read in full (threads across files) and the digest remembered.
    """
    root = Path(path).resolve()
    cache = cache if cache is not None else _shared_cache()
    entries: list[tuple[str, str, os.stat_result]] = []
    for rel, p in _files(root):
        resolved = str(p.resolve())
        try:
            entries.append((rel, resolved, os.stat(resolved)))
        except FileNotFoundError:  # a dangling link: no loader can read it either
            log.info("kvpanel: %s in %s is a link to nothing; not part of the digest", rel, root)

    def digest_of(item: tuple[str, str, os.stat_result]) -> str:
        _, resolved, st = item
        known = cache.get(resolved, st)
        if known is not None:
            return known
        with open(resolved, "rb") as f:
            st_now = os.fstat(f.fileno())
            digest = hash_file(f)
        if _stat_key(st_now) == _stat_key(st) == _stat_key(os.stat(resolved)):
            cache.put(resolved, st, digest)  # unchanged while read: safe to remember
        return digest

    if all(cache.get(e[1], e[2]) is not None for e in entries):
        digests = [digest_of(e) for e in entries]  # all known: nothing to read, no lock
    else:
        with cache.hashing():
            cache.reload()  # another process may have hashed these while this one waited
            digests = _hash_all(root, entries, cache, digest_of)
    total = hashlib.sha256()
    for (rel, _, st), digest in zip(entries, digests, strict=True):
        total.update(f"{rel}\0{st.st_size}\0{digest}\n".encode())
    return total.hexdigest()


def _hash_all(
    root: Path,
    entries: list[tuple[str, str, os.stat_result]],
    cache: DigestCache,
    digest_of: Callable[[tuple[str, str, os.stat_result]], str],
) -> list[str]:
    to_read = [e for e in entries if cache.get(e[1], e[2]) is None]
    if to_read:
        log.info(
            "kvpanel: hashing %d model file(s), %.1f MiB, once (the digest is cached in %s; "
            "--model-id skips this)",
            len(to_read),
            sum(e[2].st_size for e in to_read) / 2**20,
            cache.path,
        )
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
        digests = list(pool.map(digest_of, entries))
    if to_read:
        size = sum(e[2].st_size for e in to_read)
        log.info(
            "kvpanel: hashed %d model file(s), %.1f MiB, in %.2f s (%s); cached in %s",
            len(to_read),
            size / 2**20,
            time.monotonic() - started,
            root,
            cache.path,
        )
        cache.save()
    return digests
