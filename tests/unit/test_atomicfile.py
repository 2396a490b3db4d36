"""Atomic file replacement: content, mode, temporary names, failures and directory sync."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import atomicfile
from orchestrator.atomicfile import TEMP_MARK, sync_directory, write_atomic


@pytest.fixture
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)  # the daemon's systemd unit sets UMask=0027
    try:
        yield
    finally:
        os.umask(previous)


def test_writes_and_replaces_content(tmp_path: Path) -> None:
    target = tmp_path / "settings.json"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["settings.json"]


@pytest.mark.usefixtures("umask_027")
@pytest.mark.parametrize("mode", [0o644, 0o755, 0o600])
def test_explicit_mode_ignores_the_umask(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "file"
    write_atomic(target, b"x", mode=mode)
    assert target.stat().st_mode & 0o777 == mode


@pytest.mark.usefixtures("umask_027")
def test_no_mode_lets_the_umask_decide(tmp_path: Path) -> None:
    target = tmp_path / "runner.pid"
    write_atomic(target, b"{}", mode=None)
    assert target.stat().st_mode & 0o777 == 0o640


def test_temporary_file_is_hidden_beside_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        renames.append((os.fspath(source), os.fspath(target)))
        real_replace(source, target)

    monkeypatch.setattr(atomicfile.os, "replace", spy)
    write_atomic(tmp_path / "models.json", b"{}")
    [(source, target)] = renames
    assert Path(source).parent == tmp_path and target == str(tmp_path / "models.json")
    assert Path(source).name.startswith(".models.json" + TEMP_MARK)


def test_failed_rename_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "engine.json"
    write_atomic(target, b"old")

    def refuse(source: object, target: object) -> None:
        raise OSError(errno.EROFS, "read-only file system")

    monkeypatch.setattr(atomicfile.os, "replace", refuse)
    with pytest.raises(OSError, match="read-only"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["engine.json"]


def test_missing_directory_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "file", b"x")


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP, errno.EBADF])
def test_directory_sync_tolerates_file_systems_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def unsupported(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomicfile.os, "fsync", unsupported)
    sync_directory(tmp_path)


def test_directory_sync_reports_real_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(atomicfile.os, "fsync", broken)
    with pytest.raises(OSError, match="I/O error"):
        sync_directory(tmp_path)
