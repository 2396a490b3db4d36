"""The runtime directory is private to the daemon's user, or the daemon refuses to start.

Tests run as root here; "another user" is simulated by chowning to nobody (65534), which only
root can do, so those tests are skipped for other users.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import atomicfile
from orchestrator.atomicfile import write_atomic
from orchestrator.errors import ConfigError
from orchestrator.runners.process import RunnerProcess
from orchestrator.runtimedir import ensure_private_dir, prepare_runtime_dir
from orchestrator.settings import Config

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


# --- happy paths ---------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("explicit", [False, True])
def test_fresh_directory_is_created_private(tmp_path: Path, explicit: bool) -> None:
    path = tmp_path / "model-runner-0"
    assert ensure_private_dir(path, explicit=explicit) == path
    assert mode_of(path) == 0o700 and os.lstat(path).st_uid == os.geteuid()


def test_umask_cannot_leave_the_owner_without_access(tmp_path: Path) -> None:
    previous = os.umask(0o177)  # would make mkdir(0o700) a 0o600 directory nobody can enter
    try:
        ensure_private_dir(tmp_path / "run", explicit=False)
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "run") == 0o700


@pytest.mark.usefixtures("umask_022")
def test_missing_parents_of_an_explicit_directory_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "run"
    ensure_private_dir(path, explicit=True)
    assert mode_of(path) == 0o700


def test_systemd_runtime_directory_0750_of_ours_is_accepted_as_is(tmp_path: Path) -> None:
    # RuntimeDirectory=docker-model-runner with RuntimeDirectoryMode=0750, owned by the service user.
    path = tmp_path / "docker-model-runner"
    path.mkdir()
    path.chmod(0o750)
    assert ensure_private_dir(path, explicit=True) == path
    assert mode_of(path) == 0o750


def test_existing_private_directory_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    (path / "runners").mkdir()
    ensure_private_dir(path, explicit=False)
    assert (path / "runners").is_dir() and mode_of(path) == 0o700


def test_default_directory_of_ours_that_others_can_read_is_made_private(tmp_path: Path) -> None:
    # What earlier versions left behind (mkdir under umask 022): only we could write in it.
    path = tmp_path / "model-runner-0"
    path.mkdir()
    path.chmod(0o755)
    ensure_private_dir(path, explicit=False)
    assert mode_of(path) == 0o700


# --- refusals ------------------------------------------------------------------------------


@as_root
@pytest.mark.parametrize("explicit", [False, True])
def test_squatted_directory_is_refused_with_a_clear_message(tmp_path: Path, explicit: bool) -> None:
    path = tmp_path / "model-runner-0"
    path.mkdir()
    path.chmod(0o777)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(ConfigError) as caught:
        ensure_private_dir(path, explicit=explicit)
    message = caught.value.message
    assert str(path) in message
    assert "65534" in message and "nobody" in message  # who owns it
    assert "0777" in message  # its mode
    assert "remove it" in message and "DMR_RUNTIME_DIR" in message and "XDG_RUNTIME_DIR" in message
    assert caught.value.param == "runtime_dir"
    assert mode_of(path) == 0o777 and os.lstat(path).st_uid == NOBODY  # left as found


@as_root
def test_private_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="owned by nobody"):
        ensure_private_dir(path, explicit=True)


@pytest.mark.parametrize("explicit", [False, True])
def test_symlinked_runtime_directory_is_refused(tmp_path: Path, explicit: bool) -> None:
    # Even a link to a private directory of ours: whoever made the link can re-point it.
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "model-runner-0"
    link.symlink_to(real)
    with pytest.raises(ConfigError) as caught:
        ensure_private_dir(link, explicit=explicit)
    assert str(link) in caught.value.message and "symbolic link" in caught.value.message
    assert str(real) in caught.value.message
    assert link.is_symlink()


def test_dangling_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "would-be-created"
    link = tmp_path / "run"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        ensure_private_dir(link, explicit=False)
    assert not target.exists()


@pytest.mark.parametrize(("mode", "explicit"), [(0o777, False), (0o770, True), (0o702, True)])
def test_directory_of_ours_others_can_write_is_refused(
    tmp_path: Path, mode: int, explicit: bool
) -> None:
    path = tmp_path / "run"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}"):
        ensure_private_dir(path, explicit=explicit)
    assert mode_of(path) == mode


def test_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run"
    path.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        ensure_private_dir(path, explicit=True)


@as_root
def test_directory_whose_parent_another_user_controls_is_refused(tmp_path: Path) -> None:
    # `sudo -E`: $XDG_RUNTIME_DIR is the invoking user's, who could swap our directory out.
    parent = tmp_path / "run-user-1000"
    parent.mkdir(mode=0o700)
    os.chown(parent, NOBODY, NOBODY)
    with pytest.raises(ConfigError) as caught:
        ensure_private_dir(parent / "model-runner", explicit=False)
    assert str(parent) in caught.value.message and "nobody" in caught.value.message


def test_world_writable_parent_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(ConfigError, match="sticky"):
        ensure_private_dir(parent / "run", explicit=True)


def test_sticky_world_writable_parent_like_tmp_is_accepted(tmp_path: Path) -> None:
    parent = tmp_path / "tmp"
    parent.mkdir()
    parent.chmod(0o1777)
    ensure_private_dir(parent / "model-runner-0", explicit=False)
    assert mode_of(parent / "model-runner-0") == 0o700


# --- which rules apply: the configuration decides ------------------------------------------


def test_xdg_default_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = prepare_runtime_dir(Config())
    assert path == tmp_path / "model-runner" and mode_of(path) == 0o700


def test_default_without_xdg_is_per_user_under_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert Config().runtime_path == Path(f"/tmp/model-runner-{os.geteuid()}")


def test_explicit_setting_gets_the_explicit_rules(tmp_path: Path) -> None:
    path = tmp_path / "docker-model-runner"
    path.mkdir()
    path.chmod(0o750)
    assert prepare_runtime_dir(Config(runtime_dir=str(path))) == path
    assert mode_of(path) == 0o750


def test_default_location_gets_the_strict_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "model-runner").mkdir()
    (tmp_path / "model-runner").chmod(0o750)
    prepare_runtime_dir(Config())
    assert mode_of(tmp_path / "model-runner") == 0o700


# --- files written into it -----------------------------------------------------------------


def test_temporary_file_is_never_opened_through_a_planted_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes: "0" * (2 * nbytes))
    for name in ("c1-aaaa.pid.tmp", f".c1-aaaa.pid{atomicfile.TEMP_MARK}{'0' * 12}"):
        (run / name).symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_atomic(run / "c1-aaaa.pid", b"{}", mode=0o600)
    assert victim.read_bytes() == b"precious"


def test_temporary_file_is_opened_with_o_nofollow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags_seen: list[int] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        flags_seen.append(flags)
        return real_open(path, flags, mode)

    monkeypatch.setattr(atomicfile.os, "open", spy)
    write_atomic(tmp_path / "file", b"x", mode=0o600)
    want = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    assert flags_seen and flags_seen[0] & want == want


def _runner(run: Path) -> RunnerProcess:
    return RunnerProcess(
        runner_id="c1-aaaa",
        label="test",
        argv=["/bin/sleep", "30"],
        socket_path=run / "c1-aaaa.sock",
        log_path=run / "c1-aaaa.log",
        runtime_dir=run,
    )


@pytest.mark.usefixtures("umask_022")
def test_pid_file_is_private_and_replaces_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    (run / "c1-aaaa.pid").symlink_to(victim)
    runner = _runner(run)
    runner.pid = os.getpid()  # any live process: _write_pid_file only reads its create time
    runner._write_pid_file()
    assert victim.read_bytes() == b"precious"
    pid_file = run / "c1-aaaa.pid"
    assert not pid_file.is_symlink() and mode_of(pid_file) == 0o600
    assert json.loads(pid_file.read_text())["pid"] == os.getpid()


def test_temporary_name_clash_is_reported_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes: "1" * (2 * nbytes))
    (tmp_path / f".file{atomicfile.TEMP_MARK}{'1' * 12}").symlink_to(tmp_path / "absent")
    with pytest.raises(OSError) as caught:
        write_atomic(tmp_path / "file", b"x")
    assert caught.value.errno == errno.EEXIST
    assert not (tmp_path / "absent").exists()


@as_root
def test_parent_that_is_another_users_symlink_is_refused(tmp_path: Path) -> None:
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(ours)
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(ConfigError, match="re-point"):
        ensure_private_dir(link / "run", explicit=True)


def test_parent_that_is_our_symlink_is_accepted(tmp_path: Path) -> None:
    # /var/run -> /run: a link root (or we) made is an ordinary path.
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o755)
    (tmp_path / "var-run").symlink_to(ours)
    ensure_private_dir(tmp_path / "var-run" / "run", explicit=True)
    assert mode_of(ours / "run") == 0o700
