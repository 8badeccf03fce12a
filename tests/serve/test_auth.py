"""The control token file and the state dir: never followed, never foreign, stable."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from kvpanel.serve.auth import ensure_token, read_token_file
from kvpanel.serve.state_dir import StateDirError
from tests.redis_server import environment_skip


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_new_state_dir_is_0700_and_token_file_0600(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    token, path = ensure_token(state, None)
    assert path == state / "token"
    assert mode(state) == 0o700 and mode(path) == 0o600
    assert path.read_text() == token + "\n" and len(token) >= 32


def test_token_is_reused_across_calls(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, _ = ensure_token(state, None)
    again, path = ensure_token(state, None)
    assert again == first  # a restart keeps the token: attached panels stay authorized
    given, _ = ensure_token(state, "given-token-0123456789")
    assert given == "given-token-0123456789"
    assert ensure_token(state, None)[0] == given and mode(path) == 0o600


def test_token_file_readable_by_others_is_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old, path = ensure_token(state, None)
    os.chmod(path, 0o644)  # anyone may have read it
    new, _ = ensure_token(state, None)
    assert new != old and mode(path) == 0o600
    assert path.read_text().strip() == new


def test_symlinked_token_file_is_refused_and_target_untouched(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "victim.conf"
    target.write_text("precious\n")
    os.chmod(target, 0o644)
    (state / "token").symlink_to(target)
    for given in (None, "given-token-0123456789"):
        with pytest.raises(StateDirError, match="symlink"):
            ensure_token(state, given)
    assert target.read_text() == "precious\n" and mode(target) == 0o644
    assert (state / "token").is_symlink()
    with pytest.raises(StateDirError, match="symlink"):
        read_token_file(state / "token")


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_non_regular_token_file_is_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if kind == "fifo":
        os.mkfifo(state / "token", 0o600)
    else:
        (state / "token").mkdir()
    result: list[BaseException] = []

    def run() -> None:
        try:
            ensure_token(state, None)
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "ensure_token blocked on the token path"
    assert len(result) == 1 and isinstance(result[0], StateDirError), result
    assert "not a regular file" in str(result[0])


def test_token_file_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    ensure_token(state, None)
    me = os.geteuid()
    os.chmod(state, 0o700)
    # The file (and dir) now look foreign: as if created by uid me+1.
    monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    with pytest.raises(StateDirError, match="belongs to uid"):
        ensure_token(state, None)


def test_foreign_file_in_own_dir_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:  # only root can give a file away; CI runs as root
        environment_skip("needs root to chown a file to another uid (CI runs as root)")
    state = tmp_path / "state"
    token, path = ensure_token(state, None)
    os.chown(path, 65534, 65534)
    with pytest.raises(StateDirError, match="belongs to uid 65534"):
        ensure_token(state, None)
    with pytest.raises(StateDirError, match="belongs to uid 65534"):
        read_token_file(path)


@pytest.mark.parametrize("dir_mode", [0o755, 0o770, 0o701])
def test_state_dir_open_to_others_is_refused(tmp_path: Path, dir_mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, dir_mode)
    with pytest.raises(StateDirError, match="must be private"):
        ensure_token(state, None)
    assert not (state / "token").exists()


def test_state_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(OSError):
        ensure_token(tmp_path / "f", None)


def test_servers_starting_together_agree_on_one_token(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    tokens: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        tokens.append(ensure_token(state, None)[0])

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(tokens) == 8 and len(set(tokens)) == 1
    assert (state / "token").read_text().strip() == tokens[0]
    assert sorted(p.name for p in state.iterdir()) == ["token"]  # no temp file left
