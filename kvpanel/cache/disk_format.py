"""On-disk chunk file format.

Primitives:
- ``ChunkHeader``: the fixed 64-byte little-endian header of a ``.kvc`` file.
- ``CorruptChunk``: raised when a file is torn, foreign or fails its checksum.
- ``chunk_path``: ``<fp dir>/<key hex[:2]>/<key hex>.kvc``.
- ``write_chunk``: atomic write (temp file in the same dir, optional fsync, os.replace).
- ``read_header`` / ``read_chunk``: validated reads (header fields, file size, checksum) of
  regular files only: a FIFO, device or symlink at a chunk path is a ``CorruptChunk``/``OSError``,
  never opened in a way that could block or lead outside the cache dir.

Every function taking a ``path`` also takes ``dir_fd``: with it, ``path`` is a name inside that
directory (see disk_dirs.py: the tier opens its folders without following symlinks).

With a ``CacheSecret`` (``secret=``) the checksum field holds a keyed MAC instead
(``kvpanel.cache.secret``); callers then pass the secret's namespace digest as the fingerprint.

Layout: magic ``b"KVPC"``, version u16, header length u16, fingerprint digest (16 bytes),
chunk key (16 bytes), payload length u64, the payload check (16 bytes, ``secret.payload_check``:
xxh3-128, or a keyed blake2b MAC with a cache secret); then payload. 128 bits rather than a
crc32 because a corrupted chunk silently poisons model outputs. Version 1 files (blake2b
checks) are foreign to version 2 and deleted by the index rebuild.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from kvpanel.cache.secret import CacheSecret, payload_check

MAGIC = b"KVPC"
FORMAT_VERSION = 2
_HEADER = struct.Struct("<4sHH16s16sQ16s")
HEADER_BYTES = _HEADER.size  # 64
SUFFIX = ".kvc"
TMP_MARKER = ".tmp."


class CorruptChunk(Exception):
    """The file does not hold a valid chunk for the expected fingerprint and key."""


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    fingerprint: bytes
    key: bytes
    payload_bytes: int
    checksum: bytes

    @property
    def file_bytes(self) -> int:
        return HEADER_BYTES + self.payload_bytes

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            HEADER_BYTES,
            self.fingerprint,
            self.key,
            self.payload_bytes,
            self.checksum,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> ChunkHeader:
        if len(raw) < HEADER_BYTES:
            raise CorruptChunk(f"short header ({len(raw)} bytes)")
        magic, version, header_len, fp, key, n, checksum = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise CorruptChunk(f"bad magic {magic!r}")
        if version != FORMAT_VERSION or header_len != HEADER_BYTES:
            raise CorruptChunk(f"unsupported format version {version} / header {header_len}")
        return cls(fp, key, n, checksum)


def checksum(data: memoryview | bytes | bytearray) -> bytes:
    """The unkeyed payload check (files written without a cache secret)."""
    return payload_check(data, b"", b"", None)


def chunk_path(fp_dir: Path, key: bytes) -> Path:
    name = key.hex()
    return fp_dir / name[:2] / f"{name}{SUFFIX}"


def _write_all(fd: int, data: memoryview | bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _write_all_v(fd: int, header: bytes, payload: memoryview) -> None:
    # One syscall for header + payload in the common case (a 6-12 MB chunk).
    written = os.writev(fd, [header, payload])
    if written < len(header):
        _write_all(fd, memoryview(header)[written:])
        written = len(header)
    _write_all(fd, payload[written - len(header) :])


def write_chunk(
    path: Path | str,
    fingerprint: bytes,
    key: bytes,
    payload: memoryview,
    *,
    fsync: bool = False,
    dir_fd: int | None = None,
    secret: CacheSecret | None = None,
) -> int:
    """Write atomically; readers see the old state or the complete file. Returns file bytes.

    On any error the temp file is removed and the error propagates.
    """
    check = payload_check(payload, fingerprint, key, secret)
    header = ChunkHeader(fingerprint, key, payload.nbytes, check)
    if dir_fd is None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{os.fspath(path)}{TMP_MARKER}{os.getpid()}.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
    try:
        try:
            _write_all_v(fd, header.pack(), payload)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    return header.file_bytes


def open_regular(path: Path | str, dir_fd: int | None = None) -> int:
    """A read-only fd of ``path`` if it is a regular file, else ``CorruptChunk``/``OSError``.

    lstat first, so a FIFO or device is never opened; O_NOFOLLOW and O_NONBLOCK in case one is
    swapped in after that check: a symlink then fails (ELOOP) instead of leading elsewhere, and
    opening a FIFO returns at once (then fails the fstat check) instead of waiting for a writer.
    """
    if not stat.S_ISREG(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode):
        raise CorruptChunk("not a regular file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CorruptChunk("not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_header(
    path: Path | str, fingerprint: bytes, key: bytes, *, dir_fd: int | None = None
) -> ChunkHeader:
    """Header of ``path`` if it names this fingerprint and key and the size matches."""
    with os.fdopen(open_regular(path, dir_fd), "rb") as f:
        header = ChunkHeader.unpack(f.read(HEADER_BYTES))
        size = os.fstat(f.fileno()).st_size
    _check_identity(header, fingerprint, key, size)
    return header


def _check_identity(header: ChunkHeader, fingerprint: bytes, key: bytes, size: int) -> None:
    if header.fingerprint != fingerprint:
        raise CorruptChunk("fingerprint mismatch")
    if header.key != key:
        raise CorruptChunk("key mismatch")
    if size != header.file_bytes:
        raise CorruptChunk(f"torn file: {size} bytes, header says {header.file_bytes}")


def read_chunk(
    path: Path | str,
    fingerprint: bytes,
    key: bytes,
    out: memoryview | None = None,
    *,
    dir_fd: int | None = None,
    secret: CacheSecret | None = None,
) -> int:
    """Read and validate the payload into ``out`` (or just validate when ``out`` is None).

    ``out`` must be a writable byte view of at least the payload length. Returns the payload
    length. Raises ``CorruptChunk`` or ``OSError``; ``out`` may then hold garbage.
    """
    with os.fdopen(open_regular(path, dir_fd), "rb", buffering=0) as f:
        header = ChunkHeader.unpack(f.read(HEADER_BYTES))
        _check_identity(header, fingerprint, key, os.fstat(f.fileno()).st_size)
        n = header.payload_bytes
        buf = memoryview(bytearray(n)) if out is None else out[:n]
        if buf.nbytes < n:
            raise ValueError(f"destination holds {buf.nbytes} bytes, chunk is {n}")
        got = 0
        while got < n:
            step = f.readinto(buf[got:])
            if not step:
                raise CorruptChunk(f"file shrank while reading ({got} of {n} bytes)")
            got += step
    if not hmac.compare_digest(payload_check(buf, fingerprint, key, secret), header.checksum):
        raise CorruptChunk("payload checksum mismatch")
    return n
