"""The server's private state directory and the engine's control socket in it.

The state dir holds the control token and the control socket, both of which grant control of
the server: it must be a directory owned by this user with no access for group or others
(0700). A shared or foreign directory is refused, never "fixed" (it may be someone's $HOME).

The control socket is ``<state dir>/control-<pid>.sock``: not guessable by other users (they
cannot list or enter the dir), no collisions between servers sharing a state dir. AF_UNIX paths
are limited to 107 bytes; for a longer state dir path the socket goes into a fresh private dir
from ``tempfile.mkdtemp`` (0700, random name). ``ControlSocket.remove()`` deletes it at exit.

    prepare_state_dir(path)         - create (0700) or check; raises StateDirError
    control_socket(state_dir, pid)  - a ControlSocket whose path is free to bind
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvpanel.settings import ConfigError

MAX_UNIX_PATH = 107  # sun_path is 108 bytes, one of them the terminating NUL
_DP_SUFFIX = 8  # room for ".dp<rank>": data-parallel engine cores bind next to the path


class StateDirError(ConfigError):
    """The state dir or a file in it is not safe to use (one line, says what to do)."""


def check_private_dir(path: Path) -> None:
    st = os.stat(path)  # the dir itself may be a symlink (e.g. ~/.local/state on another disk)
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state dir {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise StateDirError(
            f"state dir {path} belongs to uid {st.st_uid}, not to this user "
            f"({os.geteuid()}); use --state-dir with a directory of your own"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise StateDirError(
            f"state dir {path} is mode {stat.S_IMODE(st.st_mode):04o}: it holds the control "
            f"token and socket and must be private (chmod 700 {path}, or another --state-dir)"
        )


def prepare_state_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 if missing, then check it is ours and private."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_private_dir(path)
    return path


@dataclass(frozen=True, slots=True)
class ControlSocket:
    path: str
    private_dir: str | None = None  # a mkdtemp dir made for it, removed with it

    def remove(self) -> None:
        """Delete the socket (only a socket: anything else at the path is not ours)."""
        # With data parallelism engine cores past rank 0 bind <path>.dp<rank> (engine_socket_path).
        for path in [self.path, *glob.glob(glob.escape(self.path) + ".dp*")]:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _free_for_us(path: str) -> bool:
    """True when ``path`` can be bound: absent, or a dead socket / file left there (removed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if stat.S_ISSOCK(st.st_mode) and _answers(path):
        return False  # live: a server with our pid in another PID namespace shares the dir
    if stat.S_ISSOCK(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        os.unlink(path)  # a leftover of a dead process that had our pid
        return True
    return False  # a directory or a device: leave it, bind elsewhere


def control_socket(state_dir: Path, pid: int | None = None) -> ControlSocket:
    """Where the engine's control socket goes; ``state_dir`` was checked by prepare_state_dir."""
    name = f"control-{os.getpid() if pid is None else pid}.sock"
    path = os.path.join(os.path.abspath(state_dir), name)
    if len(os.fsencode(path)) + _DP_SUFFIX <= MAX_UNIX_PATH and _free_for_us(path):
        return ControlSocket(path)
    private = tempfile.mkdtemp(prefix="kvpanel-")  # 0700, ours, unpredictable name
    path = os.path.join(private, name)
    if len(os.fsencode(path)) + _DP_SUFFIX > MAX_UNIX_PATH:
        os.rmdir(private)
        raise StateDirError(
            f"no usable path for the control socket: {path} is over {MAX_UNIX_PATH} bytes "
            "(use a shorter --state-dir or TMPDIR)"
        )
    return ControlSocket(path, private)
