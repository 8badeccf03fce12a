"""The folders below a disk cache root, opened without ever following a symlink.

Primitives:
- ``open_real_dir``: a directory under a directory fd; a symlink in its place is removed (the
  link, never what it points to) and a real directory made instead.
- ``prepare_fp_dir``: ``<root>/<fingerprint hex>`` as an fd, proven writable, with
  ``fingerprint.json`` written. The root itself may be a symlink: that is the operator's choice.
- ``ShardDirs``: the ``<key hex[:2]>`` shard folders of one fingerprint dir; owns its fd.
- ``scan_chunks``: the index rebuild's walk: valid chunks, removed junk, counted odd entries.
- ``measure_chunks``: the evictor's lighter walk (names and sizes only) of what the dir holds.

Several processes may share one fingerprint dir (disk_share.py): a temp file is removed only
when its writer is gone (its pid, in the name, is dead) or it is older than any live write could
be (``STALE_TMP_S``), never while another process may still rename it into place.

The cache dir may be shared with other users. Everything below the root is opened relative to
the fingerprint dir's fd with O_NOFOLLOW, so a shard folder swapped for a link to elsewhere,
even between a check and its use, is never read, written or deleted into.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.keys import KEY_BYTES, ChunkKey, Fingerprint

log = logging.getLogger("kvpanel")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_real_dir(name: str, dir_fd: int, *, create: bool) -> int:
    """fd of the real directory ``name`` in ``dir_fd``; ``OSError`` if it cannot be had safely
    (absent and not ``create``, a file in its place, a link planted again meanwhile)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        if not create or e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if not stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise  # a file or FIFO named like our folder: not ours to remove
        os.unlink(name, dir_fd=dir_fd)  # the link itself; its target is never touched
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def prepare_fp_dir(root: Path, fp: Fingerprint, dir_name: str) -> int:
    """fd of ``<root>/<dir_name>`` (the fingerprint's namespace digest in hex); ``OSError`` if the
    root cannot hold it."""
    root.mkdir(parents=True, exist_ok=True)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fp_fd = open_real_dir(dir_name, root_fd, create=True)
    finally:
        os.close(root_fd)
    try:
        # Also proves writability with a real file: os.access lies for root and read-only mounts.
        _write_atomic(fp_fd, "fingerprint.json", (fp.to_json() + "\n").encode())
    except BaseException:
        os.close(fp_fd)
        raise
    return fp_fd


def write_note(dir_fd: int, name: str, data: bytes) -> None:
    """Replace the small file ``name`` in ``dir_fd`` atomically (``OSError`` on failure)."""
    _write_atomic(dir_fd, name, data)


def read_note(dir_fd: int, name: str, max_bytes: int = 4096) -> bytes | None:
    """The small regular file ``name`` in ``dir_fd``, or None (absent, a link, too large)."""
    try:
        fd = fmt.open_regular(name, dir_fd)
    except (OSError, fmt.CorruptChunk):
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    return data if len(data) <= max_bytes else None


def _write_atomic(dir_fd: int, name: str, data: bytes) -> None:
    # Replacing (not opening) the name: a symlink planted there is replaced, not written through.
    tmp = f".{name}{fmt.TMP_MARKER}{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _split(key: bytes) -> tuple[str, str]:
    path = fmt.chunk_path(Path(), key)  # the layout is defined in one place
    return path.parent.name, path.name


class ShardDirs:
    """Chunk files by key, each reached through its shard folder's own fd.

    Owns the fingerprint dir's fd. ``close`` defers closing it until the last ``opened`` user
    is done: a promotion given up on may return long after the tier closed, and an fd number
    closed under it could meanwhile name another directory, where it would read and delete.
    """

    def __init__(self, fp_fd: int) -> None:
        self.fp_fd = fp_fd
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    @contextlib.contextmanager
    def opened(self, key: bytes, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """``(shard dir fd, file name)`` of ``key``'s chunk; ``OSError`` if the shard is not a
        real directory (``create``: made one if absent or a symlink) or the tier is closed."""
        with self._lock:
            if self._closing:
                raise OSError(errno.EBADF, "disk tier closed")
            self._users += 1
        try:
            shard, name = _split(key)
            fd = open_real_dir(shard, self.fp_fd, create=create)
            try:
                yield fd, name
            finally:
                os.close(fd)
        finally:
            with self._lock:
                self._users -= 1
                last = self._closing and self._users == 0
            if last:
                os.close(self.fp_fd)

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            last = self._users == 0
        if last:
            os.close(self.fp_fd)

    def unlink(self, key: bytes) -> bool:
        """Remove ``key``'s file if there is one; never raises (a directory there stays).
        True only if this call removed it (the caller then owns uncounting its bytes)."""
        with contextlib.suppress(OSError), self.opened(key) as (fd, name):
            os.unlink(name, dir_fd=fd)
            return True
        return False

    def file_bytes(self, key: bytes) -> int | None:
        """Size of ``key``'s file if it is a regular file now, else None (never raises)."""
        with contextlib.suppress(OSError), self.opened(key) as (fd, name):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            return st.st_size if stat.S_ISREG(st.st_mode) else None
        return None


@dataclass
class ChunkScan:
    found: list[tuple[float, ChunkKey, int]] = field(default_factory=list)  # mtime, key, bytes
    errors: int = 0
    odd: list[str] = field(default_factory=list)  # entries skipped, named in one log line


def scan_chunks(fp_fd: int, fp_digest: bytes, payload_bytes: int, where: Path) -> ChunkScan:
    """Index the chunk files of a fingerprint dir; never raises on what other users put there.

    Torn, foreign, wrong-sized or non-regular chunk files and temp files are removed (unlink
    takes a name, never what a link points to); directories named like them and symlinked
    shard folders are never entered. Each of those counts as one error.
    """
    scan = ChunkScan()
    try:
        with os.scandir(fp_fd) as it:
            shards = [e for e in it if not e.name.startswith(".")]
    except OSError as e:  # our own folder: the tier starts empty, writes will tell
        scan.errors += 1
        scan.odd.append(f". ({e})")
        shards = []
    for entry in shards:
        try:
            if entry.is_symlink():
                scan.errors += 1
                scan.odd.append(entry.name)
                with contextlib.suppress(OSError):  # a real one is made when a chunk needs it
                    os.unlink(entry.name, dir_fd=fp_fd)
                continue
            if not entry.is_dir(follow_symlinks=False):
                continue  # fingerprint.json, .lock
            fd = open_real_dir(entry.name, fp_fd, create=False)
        except OSError:
            scan.errors += 1  # unreadable, or swapped for something else since the listing
            scan.odd.append(entry.name)
            continue
        try:
            _scan_shard(fd, entry.name, fp_digest, payload_bytes, scan)
        except OSError:
            scan.errors += 1
            scan.odd.append(entry.name)
        finally:
            os.close(fd)
    if scan.odd:
        log.warning(
            "disk cache %s: skipped %d entries that are neither chunk files nor real folders "
            "(e.g. %s): never entered, followed or served (links themselves are removed)",
            where,
            len(scan.odd),
            ", ".join(scan.odd[:3]),
        )
    return scan


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return True  # cannot tell: leave it alone, as a directory would be


def _scan_shard(fd: int, shard: str, fp_digest: bytes, payload_bytes: int, scan: ChunkScan) -> None:
    with os.scandir(fd) as it:
        entries = list(it)
    for entry in entries:
        name = entry.name
        is_tmp = fmt.TMP_MARKER in name
        if not is_tmp and not name.endswith(fmt.SUFFIX):
            continue
        if _is_real_dir(entry):
            scan.errors += 1
            scan.odd.append(f"{shard}/{name}")
            continue
        if is_tmp:
            _remove_if_abandoned(fd, entry)
            continue
        try:
            key = ChunkKey(bytes.fromhex(name[: -len(fmt.SUFFIX)]))
            header = fmt.read_header(name, fp_digest, key, dir_fd=fd)
            if header.payload_bytes != payload_bytes:
                raise fmt.CorruptChunk(f"payload of {header.payload_bytes} bytes")
            mtime = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime
        except FileNotFoundError:
            # Evicted by a process sharing the dir since the listing: nothing wrong, and the
            # name is left alone (a new valid file may have been renamed there meanwhile).
            continue
        except (ValueError, OSError, fmt.CorruptChunk):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
            scan.errors += 1
            continue
        scan.found.append((mtime, key, header.file_bytes))


# No live write takes this long; a temp file this old is abandoned even if its pid was reused.
STALE_TMP_S = 600.0
# A temp file younger than this is never removed, even if no process of its pid is seen here:
# a replica in another container (its own pid namespace) on the same directory may be writing
# it right now. A killed writer's file waits this long; it is never read (no chunk name).
YOUNG_TMP_S = 120.0


def _writer_alive(tmp_name: str) -> bool:
    # "<name>.tmp.<pid>.<random>": see disk_format.write_chunk.
    try:
        pid = int(tmp_name.split(fmt.TMP_MARKER, 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, another user's
    return True


def _remove_if_abandoned(fd: int, entry: os.DirEntry[str]) -> None:
    try:
        age = time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return
    if age > STALE_TMP_S or (age > YOUNG_TMP_S and not _writer_alive(entry.name)):
        with contextlib.suppress(OSError):
            os.unlink(entry.name, dir_fd=fd)  # its writer died mid-write


@dataclass
class DirMeasure:
    found: list[tuple[float, ChunkKey]] = field(default_factory=list)  # mtime, key
    total: int = 0  # bytes of the chunk files found
    removed: int = 0  # files of a wrong size (never written whole by us) removed


def measure_chunks(fp_fd: int, file_bytes: int) -> DirMeasure:
    """Chunk files of a fingerprint dir by name and size (no header reads: the evictor runs
    this while the dir is in use; reads still check every file). Wrong-sized chunk files and
    abandoned temp files are removed; links and odd entries are skipped, never followed."""
    out = DirMeasure()
    try:
        with os.scandir(fp_fd) as it:
            shards = [e.name for e in it if not e.name.startswith(".")]
    except OSError:
        return out
    for shard in shards:
        try:
            fd = open_real_dir(shard, fp_fd, create=False)
        except OSError:
            continue  # a file (fingerprint.json), a link, or gone
        try:
            with os.scandir(fd) as it:
                entries = list(it)
            for entry in entries:
                _measure_entry(fd, entry, file_bytes, out)
        except OSError:
            pass
        finally:
            os.close(fd)
    return out


def _measure_entry(fd: int, entry: os.DirEntry[str], file_bytes: int, out: DirMeasure) -> None:
    name = entry.name
    if fmt.TMP_MARKER in name:
        if entry.is_file(follow_symlinks=False):
            _remove_if_abandoned(fd, entry)
        return
    if not name.endswith(fmt.SUFFIX):
        return
    try:
        key = ChunkKey(bytes.fromhex(name[: -len(fmt.SUFFIX)]))
        st = entry.stat(follow_symlinks=False)
    except (ValueError, OSError):
        return
    if len(key) != KEY_BYTES:
        return
    if not stat.S_ISREG(st.st_mode):
        return
    if st.st_size != file_bytes:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=fd)
            out.removed += 1
        return
    out.found.append((st.st_mtime, key))
    out.total += st.st_size
