"""Size caps of the log directory: the daemon log's handler and the engine logs' in-place rotation."""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import logfiles
from orchestrator.logfiles import CappedFileHandler, EngineLogCap, rotate_in_place


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo setup_logging's changes to the ``orchestrator`` logger (other tests use caplog)."""
    logger = logging.getLogger("orchestrator")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:], logger.level, logger.propagate = saved


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.logcaps.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return logger


def _all_lines(directory: Path, name: str) -> list[str]:
    lines: list[str] = []
    for path in sorted(directory.glob(f"{name}*")):
        lines += path.read_text(encoding="utf-8").splitlines()
    return lines


def test_daemon_log_rotates_at_the_cap_and_keeps_the_backups(tmp_path: Path) -> None:
    path = tmp_path / "inference.log"
    handler = CappedFileHandler(path, max_bytes=1000, backups=2)
    logger = _logger("rotate", handler)
    try:
        for number in range(200):
            logger.info("line %03d %s", number, "x" * 40)  # 50 bytes a line
    finally:
        handler.close()
    names = sorted(entry.name for entry in tmp_path.iterdir())
    assert names == ["inference.log", "inference.log.1", "inference.log.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 1000 + 50
    # Newest in the live file, the one before in .1, older ones dropped.
    newest = path.read_text().splitlines()
    assert newest[-1].startswith("line 199")
    previous = (tmp_path / "inference.log.1").read_text().splitlines()
    assert int(previous[-1].split()[1]) + 1 == int(newest[0].split()[1])


def test_no_backups_empties_the_full_log_in_place(tmp_path: Path) -> None:
    path = tmp_path / "inference.log"
    handler = CappedFileHandler(path, max_bytes=500, backups=0)
    logger = _logger("empty", handler)
    try:
        for number in range(100):
            logger.info("line %03d %s", number, "y" * 40)
    finally:
        handler.close()
    assert [entry.name for entry in tmp_path.iterdir()] == ["inference.log"]
    assert path.stat().st_size <= 500 + 50
    assert path.read_text().splitlines()[-1].startswith("line 099")


def test_a_second_writer_follows_the_rotation_instead_of_filling_the_backup(tmp_path: Path) -> None:
    """gunicorn's master and worker each hold a handler on the same file."""
    path = tmp_path / "inference.log"
    first = CappedFileHandler(path, max_bytes=2000, backups=50)
    second = CappedFileHandler(path, max_bytes=2000, backups=50)
    one, two = _logger("one", first), _logger("two", second)
    try:
        for number in range(400):
            (one if number % 3 else two).info("line %04d %s", number, "z" * 40)
    finally:
        first.close()
        second.close()
    lines = _all_lines(tmp_path, "inference.log")
    assert sorted(lines) == sorted(f"line {number:04d} {'z' * 40}" for number in range(400))
    for entry in tmp_path.iterdir():
        assert 0 < entry.stat().st_size <= 2000 + 50, entry.name


def test_two_processes_share_the_log_without_losing_or_doubling_lines(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import logging, sys
        from pathlib import Path
        from orchestrator.logfiles import CappedFileHandler
        handler = CappedFileHandler(Path(sys.argv[1]), max_bytes=4000, backups=500)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("writer")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        for number in range(1500):
            logger.info("%s %04d %s", sys.argv[2], number, "w" * 30)
        handler.close()
        """
    )
    path = tmp_path / "inference.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(path), name], env=env)
        for name in ("master", "worker")
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    lines = _all_lines(tmp_path, "inference.log")
    expected = [f"{name} {number:04d} {'w' * 30}" for name in ("master", "worker") for number in range(1500)]
    assert sorted(lines) == sorted(expected)
    # Each writer checks the size before it writes, and may write a line or two into the file
    # another one has just renamed to .1 before it notices: a few lines over, never more.
    sizes = [entry.stat().st_size for entry in tmp_path.iterdir()]
    assert max(sizes) <= 4000 + 6 * 45 and min(sizes) > 0


def test_a_handler_inherited_across_fork_rotates_once(tmp_path: Path) -> None:
    """gunicorn's case: the master sets logging up, then forks the worker, which inherits the
    handler and its open file (one open file description, so one flock, for both)."""
    path = tmp_path / "inference.log"
    handler = CappedFileHandler(path, max_bytes=3000, backups=500)
    logger = _logger("fork", handler)

    def write(name: str) -> None:
        for number in range(1000):
            logger.info("%s %04d %s", name, number, "f" * 30)

    try:
        worker = multiprocessing.get_context("fork").Process(target=write, args=("worker",))
        worker.start()
        write("master")
        worker.join(timeout=120)
        assert worker.exitcode == 0
    finally:
        handler.close()
    lines = _all_lines(tmp_path, "inference.log")
    expected = [f"{name} {number:04d} {'f' * 30}" for name in ("master", "worker") for number in range(1000)]
    assert sorted(lines) == sorted(expected)
    assert all(entry.stat().st_size > 0 for entry in tmp_path.iterdir())


def test_the_handler_reopens_a_log_renamed_by_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "inference.log"
    handler = CappedFileHandler(path, max_bytes=0, backups=3)
    logger = _logger("reopen", handler)
    try:
        logger.info("before")
        path.rename(tmp_path / "inference.log-20260101")
        logger.info("after")
    finally:
        handler.close()
    assert path.read_text() == "after\n"
    assert (tmp_path / "inference.log-20260101").read_text() == "before\n"


def test_rotate_in_place_keeps_an_append_writer_at_the_new_end(tmp_path: Path) -> None:
    """llama-server's stdout is the log file opened "ab": after the truncation its writes must
    start at byte 0, not at the old offset (which would leave a sparse file as large as before)."""
    path = tmp_path / "engine-0123456789ab-completion.log"
    with open(path, "ab", buffering=0) as engine:
        path.chmod(0o640)
        engine.write(b"a" * 3000 + b"\n")
        assert rotate_in_place(path, max_bytes=1000, backups=2)
        engine.write(b"after\n")
    assert path.read_bytes() == b"after\n"
    assert (tmp_path / f"{path.name}.1").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / f"{path.name}.1").read_bytes() == b"a" * 3000 + b"\n"
    assert not rotate_in_place(path, max_bytes=1000, backups=2)  # under the cap: untouched
    with open(path, "ab") as engine:
        engine.write(b"b" * 2000)
    assert rotate_in_place(path, max_bytes=1000, backups=2)
    assert (tmp_path / f"{path.name}.2").read_bytes() == b"a" * 3000 + b"\n"
    assert (tmp_path / f"{path.name}.1").read_bytes() == b"after\n" + b"b" * 2000
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [
        path.name, f"{path.name}.1", f"{path.name}.2"
    ]


def test_rotate_in_place_never_follows_a_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * 5000)
    link = tmp_path / "engine-0123456789ab-completion.log"
    link.symlink_to(target)
    assert not rotate_in_place(link, max_bytes=1000, backups=1)
    assert target.read_bytes() == b"x" * 5000
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["elsewhere", link.name]


def test_engine_log_cap_checks_at_most_every_interval(tmp_path: Path) -> None:
    engine = tmp_path / "engine-0123456789ab-completion.log"
    other = tmp_path / "notes.log"
    now = [100.0]
    cap = EngineLogCap(tmp_path, 1000, 1, interval=5.0, clock=lambda: now[0])
    engine.write_bytes(b"e" * 1500)
    other.write_bytes(b"n" * 1500)
    cap.maybe_enforce()
    assert engine.stat().st_size == 0 and other.stat().st_size == 1500  # only engine-*.log
    engine.write_bytes(b"e" * 1500)
    now[0] += 4.9
    cap.maybe_enforce()
    assert engine.stat().st_size == 1500
    now[0] += 0.2
    cap.maybe_enforce()
    assert engine.stat().st_size == 0
    assert EngineLogCap(tmp_path, 0, 1).enforce() == []  # 0 = no cap


def test_setup_logging_caps_engine_logs_as_the_daemon_writes(
    tmp_path: Path, restore_logging: None
) -> None:
    engine = tmp_path / "engine-0123456789ab-completion.log"
    engine.write_bytes(b"old run\n" * 200)  # 1600 bytes, over the cap before the start
    logfiles.setup_logging(tmp_path, "info", stream=io.StringIO(), max_bytes=1000, backups=1)
    assert engine.stat().st_size == 0  # capped at start-up
    assert (tmp_path / f"{engine.name}.1").read_bytes() == b"old run\n" * 200
    (handler,) = [
        handler
        for handler in logging.getLogger("orchestrator").handlers
        if isinstance(handler, CappedFileHandler)
    ]
    assert (handler.max_bytes, handler.backups) == (1000, 1)
    assert handler.engine_logs is not None
    handler.engine_logs.interval = 0.0
    with open(engine, "ab", buffering=0) as child:
        child.write(b"x" * 1200)
        logging.getLogger("orchestrator.test").info("request served")
        child.write(b"next\n")
    assert engine.read_bytes() == b"next\n"
    assert (tmp_path / f"{engine.name}.1").read_bytes() == b"x" * 1200


def test_tail_reads_a_log_truncated_since_the_run_started(tmp_path: Path) -> None:
    path = tmp_path / "engine-0123456789ab-completion.log"
    path.write_text("old\n" * 500)
    start = path.stat().st_size  # where this run's output began
    with open(path, "a") as child:
        child.write("run line 1\n")
        child.flush()
        assert rotate_in_place(path, max_bytes=1000, backups=1)
        child.write("run line 2\n")
    assert logfiles.tail(path, 5, start=start) == ["run line 2"]
