"""The control-API token: given (--token / KVPANEL_TOKEN), kept, or generated; stored 0600.

The token file is ``<state dir>/token``. It is never followed through a symlink, never read
or written when it is not a regular file owned by this user (a FIFO would block the start, a
planted file would hand out a known token), and written by rename, so a reader never sees half
a token. Without ``--token`` a valid 0600 token file is reused: a restarted server keeps its
token, and attached panels and scripts keep working. A file readable by others is not reused
(its token may be known); a new token replaces it.

    ensure_token(state_dir, given) -> (token, token file path)
    read_token_file(path) -> token | None (no file)   for `kvpanel attach` / `status`
    token_matches(header, token)
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import os
import re
import secrets
import stat
from pathlib import Path

from kvpanel.serve.state_dir import StateDirError, check_private_dir, prepare_state_dir

TOKEN_FILE = "token"
MAX_TOKEN_FILE = 4096
# What a reused token must look like: the generated ones (token_urlsafe) and any sane given one.
_REUSABLE = re.compile(r"[A-Za-z0-9._~+/=-]{16,1024}")


def _open_own_file(path: Path) -> tuple[int, os.stat_result] | None:
    """An fd of ``path`` for reading when it is a regular file of ours; None when absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StateDirError(f"{path} is a symlink; refusing to follow it (remove it)") from None
        if e.errno == errno.ENXIO:  # a socket
            raise StateDirError(f"{path} is not a regular file (remove it)") from None
        raise
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file (remove it)"
    elif st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not to this user (remove it)"
    if problem:
        os.close(fd)
        raise StateDirError(f"{path} {problem}")
    return fd, st


def _read_token(path: Path) -> tuple[str, int] | None:
    """(token text, file mode) of a regular file of ours, None when absent."""
    opened = _open_own_file(path)
    if opened is None:
        return None
    fd, st = opened
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_TOKEN_FILE + 1)
    text = data.decode("utf-8", errors="replace").strip() if len(data) <= MAX_TOKEN_FILE else ""
    return text, stat.S_IMODE(st.st_mode)


def _write_token(state_dir: Path, token: str, only_if_absent: bool = False) -> bool:
    """Store ``token`` (False: ``only_if_absent`` and another process stored one first)."""
    path = state_dir / TOKEN_FILE
    _read_token(path)  # refuses a symlink, a non-regular file or a foreign file at the path
    tmp = state_dir / f".{TOKEN_FILE}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have narrowed it; never wider than 0600
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        if only_if_absent:  # two servers starting on one state dir must agree on one token
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        else:
            os.replace(tmp, path)  # replaces the name, never writes through it
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def ensure_token(state_dir: Path, given: str | None) -> tuple[str, Path]:
    """The server's token and its file: ``given``, else the file's (valid, 0600), else new."""
    prepare_state_dir(state_dir)
    path = state_dir / TOKEN_FILE
    if given is not None:
        _write_token(state_dir, given)
        return given, path
    for _ in range(3):
        existing = _read_token(path)
        if existing is not None:
            token, mode = existing
            if mode == 0o600 and _REUSABLE.fullmatch(token):
                return token, path
        token = secrets.token_urlsafe(24)
        # Replace a file not fit for reuse; create one only where another process did not.
        if _write_token(state_dir, token, only_if_absent=existing is None):
            return token, path
    raise StateDirError(f"{path} keeps changing while being read; is another server writing it?")


def read_token_file(path: Path) -> str | None:
    """The token stored at ``path`` (for clients on this machine); None when there is none."""
    if path.parent.exists():
        check_private_dir(path.parent)
    found = _read_token(path)
    if found is None:
        return None
    token, _ = found
    return token or None


def token_matches(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), token.encode())
