"""Where the engine's control socket goes: the private state dir, never a guessable /tmp path."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from kvpanel.serve.state_dir import MAX_UNIX_PATH, control_socket, prepare_state_dir
from kvpanel.vllm_ext.control import ControlClient, start_control_server


class FakeStore:
    """What the control server asks of a TieredStore for a stats call."""

    cpu = SimpleNamespace(memory=None)  # private CPU memory: no TP rank reports to read

    def stats(self) -> dict:
        return {}

    def transfers(self):  # type: ignore[no-untyped-def]
        class T:
            def to_dict(self) -> dict:
                return {"loads": 0}

        return T()


def serve_and_ask(path: str) -> dict:
    start_control_server(path, FakeStore())  # type: ignore[arg-type]
    return ControlClient(path, timeout=5).call(op="stats")


def test_socket_in_state_dir_and_removed(tmp_path: Path) -> None:
    state = prepare_state_dir(tmp_path / "state")
    sock = control_socket(state, pid=4242)
    assert sock.path == str(state / "control-4242.sock") and sock.private_dir is None
    # A directory squatting at the old predictable path changes nothing.
    squat = f"/tmp/kvpanel-{os.getuid()}-{os.getpid()}.sock"
    os.makedirs(squat, exist_ok=True)
    try:
        sock = control_socket(state)
        assert Path(sock.path).parent == state
        assert serve_and_ask(sock.path)["ok"]
        assert stat.S_ISSOCK(os.lstat(sock.path).st_mode)
        sock.remove()
        assert not os.path.lexists(sock.path)
    finally:
        os.rmdir(squat)


def test_long_state_dir_falls_back_to_a_private_temp_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    state = prepare_state_dir(deep)
    assert len(os.fsencode(str(state / "control-1.sock"))) > MAX_UNIX_PATH
    sock = control_socket(state, pid=os.getpid() + 100000)
    assert sock.private_dir is not None and Path(sock.path).parent == Path(sock.private_dir)
    st = os.stat(sock.private_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert len(os.fsencode(sock.path)) <= MAX_UNIX_PATH
    assert serve_and_ask(sock.path)["ok"]
    sock.remove()
    assert not os.path.exists(sock.private_dir)


def test_stale_entries_at_our_own_path(tmp_path: Path) -> None:
    state = prepare_state_dir(tmp_path / "state")
    path = state / "control-777.sock"
    # A dead socket left by an earlier process that had our pid: reused.
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    assert control_socket(state, pid=777).path == str(path) and not path.exists()
    # A directory there: left alone, the socket goes elsewhere (private), start still works.
    path.mkdir()
    sock = control_socket(state, pid=777)
    assert sock.private_dir is not None and path.is_dir()
    sock.remove()


def test_a_live_socket_at_our_path_is_not_taken_over(tmp_path: Path) -> None:
    state = prepare_state_dir(tmp_path / "state")
    path = str(state / "control-888.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen(1)
        sock = control_socket(state, pid=888)
        assert sock.path != path and stat.S_ISSOCK(os.lstat(path).st_mode)
        sock.remove()


@pytest.mark.parametrize("leftover", ["file", "symlink"])
def test_other_leftovers_at_our_path_are_replaced(tmp_path: Path, leftover: str) -> None:
    state = prepare_state_dir(tmp_path / "state")
    path = state / "control-999.sock"
    target = tmp_path / "target"
    target.write_text("keep")
    if leftover == "file":
        path.write_text("")
    else:
        path.symlink_to(target)
    assert control_socket(state, pid=999).path == str(path)
    assert not os.path.lexists(path) and target.read_text() == "keep"
