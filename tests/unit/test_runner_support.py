"""Pure helpers around runners: exit descriptions, failure hints, log files, counters."""

from __future__ import annotations

import heapq
import io
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import logfiles
from orchestrator.errors import ConfigError
from orchestrator.runners.process import describe_exit, explain_failure
from orchestrator.runners.readiness import parse_status
from orchestrator.runners.stats import RunnerStats
from tests.support.metrics_text import exposition


@pytest.mark.parametrize(
    ("returncode", "ours", "expected"),
    [
        (0, False, "exited with status 0"),
        (1, False, "exited with status 1"),
        (-signal.SIGTERM, False, "was killed by SIGTERM"),
        (-signal.SIGKILL, True, "was killed by SIGKILL"),
        (-signal.SIGSEGV, False, "was killed by SIGSEGV"),
    ],
)
def test_describe_exit(returncode: int, ours: bool, expected: str) -> None:
    assert describe_exit(returncode, killed_by_us=ours) == expected


def test_sigkill_we_did_not_send_points_at_the_oom_killer() -> None:
    text = describe_exit(-signal.SIGKILL, killed_by_us=False)
    assert "SIGKILL" in text and "out-of-memory" in text


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("llama_model_load: error loading model: bad magic", "failed to load model"),
        ("main: exiting due to model loading error", "failed to load model"),
        ("ggml_cuda: cudaMalloc failed: out of memory", "not enough GPU memory to load the model (CUDA)"),
        ("main: couldn't bind HTTP server socket, hostname: x.sock", "the runner could not listen on its socket"),
        ("error: invalid argument: --bogus", "llama-server rejected its command line"),
        ("all is well", None),
    ],
)
def test_explain_failure(line: str, hint: str | None) -> None:
    assert explain_failure(["build: 1", line]) == hint


def test_timestamps_have_nine_digits_and_round_trip() -> None:
    ns = 1_764_374_400_123_456_789
    text = logfiles.format_timestamp(ns)
    assert text == "2025-11-29T00:00:00.123456789Z"
    assert logfiles.parse_timestamp(f"[{text}] hello") == ns
    assert logfiles.parse_timestamp("no prefix") is None
    assert logfiles.format_rfc3339(1_764_374_400.9) == "2025-11-29T00:00:00Z"


def test_tail_reads_last_lines_and_honours_start(tmp_path: Path) -> None:
    path = tmp_path / "engine.log"
    path.write_text("".join(f"line {index}\n" for index in range(5000)), encoding="utf-8")
    assert logfiles.tail(path, 3) == ["line 4997", "line 4998", "line 4999"]
    start = path.stat().st_size
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("run two\n")
    assert logfiles.tail(path, 40, start=start) == ["run two"]
    assert logfiles.tail(tmp_path / "missing.log") == []
    assert logfiles.tail(path, 0) == []


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


def test_setup_logging_writes_prefixed_lines_once(tmp_path: Path, restore_logging: None) -> None:
    stream = io.StringIO()
    logfiles.setup_logging(tmp_path, "info", stream=stream)
    path = logfiles.setup_logging(tmp_path, "info", stream=stream)  # idempotent: no duplicate handlers
    logging.getLogger("orchestrator.test").info("runner ready model=%s", "smollm2")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and stream.getvalue().count("runner ready") == 1
    assert logfiles.parse_timestamp(lines[0]) is not None
    assert lines[0].endswith("level=info logger=orchestrator.test runner ready model=smollm2")
    with pytest.raises(ConfigError):
        logfiles.setup_logging(tmp_path, "chatty", stream=stream)


def test_read_entries_give_unprefixed_lines_the_previous_timestamp(tmp_path: Path) -> None:
    engine = tmp_path / "engine-0123456789ab-completion.log"
    engine.write_text(
        "leading\n[2025-11-29T00:00:01.000000000Z] runner starting\nllama output\n"
        "[2025-11-29T00:00:03.000000000Z] runner exited\n",
        encoding="utf-8",
    )
    daemon = tmp_path / "inference.log"
    daemon.write_text("[2025-11-29T00:00:02.000000000Z] level=info request\n", encoding="utf-8")
    assert logfiles.log_files(tmp_path) == [daemon, engine]
    merged = [line for _, line in heapq.merge(*(logfiles.read_entries(p) for p in logfiles.log_files(tmp_path)))]
    assert merged == [
        "leading",
        "[2025-11-29T00:00:01.000000000Z] runner starting",
        "llama output",
        "[2025-11-29T00:00:02.000000000Z] level=info request",
        "[2025-11-29T00:00:03.000000000Z] runner exited",
    ]
    assert logfiles.engine_log_path(tmp_path, "0123456789ab", "completion") == engine


def test_stats_counts_and_renders_prometheus() -> None:
    stats = RunnerStats()
    stats.record_start()
    stats.record_start()
    stats.observe_load(0.7)
    stats.observe_load(3.0)
    stats.record_start_failure("timeout")
    stats.record_stop("idle")
    stats.record_stop("crash")
    snap = stats.snapshot()
    assert snap.starts == 2 and snap.load_count == 2
    assert dict(snap.load_buckets)[1.0] == 1 and dict(snap.load_buckets)[5.0] == 2
    assert snap.load_buckets[-1] == (float("inf"), 2)
    assert snap.stops["idle"] == 1 and snap.stops["unload"] == 0
    text = exposition(stats)
    assert "dmr_runner_starts_total 2.0\n" in text
    assert 'dmr_runner_load_seconds_bucket{le="+Inf"} 2.0\n' in text
    assert 'dmr_runner_start_failures_total{reason="timeout"} 1.0\n' in text
    assert 'dmr_runner_stops_total{reason="crash"} 1.0\n' in text
    with pytest.raises(ValueError):
        stats.record_stop("bored")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{}", 200),
        (b"HTTP/1.1 503 Service Unavailable\r\n", 503),
        (b"HTTP/1.0 404 Not Found\r\n", 404),
        (b"HTTP/1.1 200", None),  # cut short
        (b"", None),
        (b"SSH-2.0-OpenSSH\r\n", None),
        (b"HTTP/1.1 OK 200\r\n", None),
    ],
)
def test_health_status_line(head: bytes, status: int | None) -> None:
    assert parse_status(head) == status


def test_health_probe_does_not_wait_for_a_close_the_engine_never_makes(tmp_path: Path) -> None:
    """An engine that keeps the connection open after a Content-Length answer (ignoring
    ``Connection: close``) is answered at once, not after the probe's timeout."""
    import socket
    import threading
    import time

    from orchestrator.runners.readiness import probe_health

    path = str(tmp_path / "engine.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    release = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 17\r\n\r\n{"status":"busy"}')
        release.wait(10)
        conn.close()

    server = threading.Thread(target=serve)
    server.start()
    try:
        began = time.monotonic()
        assert probe_health(path, timeout=5.0) == 503
        assert time.monotonic() - began < 2.5
    finally:
        release.set()
        server.join()
        listener.close()
