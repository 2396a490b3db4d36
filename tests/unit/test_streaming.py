"""BackgroundStream: errors before the first chunk raise, later ones become a last chunk."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from orchestrator.api.streaming import BackgroundStream, StreamCancelled
from orchestrator.errors import RegistryError


def test_error_before_first_chunk_is_raised() -> None:
    def job(emit: Callable[[bytes], None]) -> None:
        raise RegistryError("registry down")

    stream = BackgroundStream(job, name="t").start()
    with pytest.raises(RegistryError):
        stream.wait_first(5)


def test_error_after_first_chunk_becomes_the_last_chunk() -> None:
    def job(emit: Callable[[bytes], None]) -> None:
        emit(b"one\n")
        raise RegistryError("registry down")

    stream = BackgroundStream(
        job, name="t", on_error=lambda ex: b"error: " + str(ex).encode()
    ).start()
    stream.wait_first(5)
    assert list(stream) == [b"one\n", b"error: registry down"]


def test_success_yields_everything_in_order() -> None:
    def job(emit: Callable[[bytes], None]) -> None:
        for index in range(200):
            emit(b"%d\n" % index)

    stream = BackgroundStream(job, name="t", max_chunks=4).start()
    stream.wait_first(5)
    assert b"".join(stream) == b"".join(b"%d\n" % index for index in range(200))


def test_close_cancels_the_job_at_its_next_emit() -> None:
    cancelled = threading.Event()
    exited = threading.Event()

    def job(emit: Callable[[bytes], None]) -> None:
        try:
            while True:
                emit(b"x")
        except StreamCancelled:
            cancelled.set()
            raise

    stream = BackgroundStream(job, name="t", max_chunks=2, on_exit=exited.set).start()
    stream.wait_first(5)
    chunks = iter(stream)
    next(chunks)
    stream.close()
    assert cancelled.wait(5)
    assert exited.wait(5)
