"""``POST /models/load``: size cap (413, before and while reading) and nothing left by a refusal."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.store import mediatypes
from tests.support.api_app import ApiHarness, assert_error_shape, build_harness
from tests.support.store_models import make_artifact

CAP = 1 << 20


class _Body(io.RawIOBase):
    """A request body of ``size`` bytes that counts what the app reads (``wsgi.input``)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        chunk = self._data.read(min(len(buffer), 65536))
        buffer[: len(chunk)] = chunk
        self.read_bytes += len(chunk)
        return len(chunk)


@pytest.fixture
def harness() -> Iterator[ApiHarness]:
    harness = build_harness(max_load_size=CAP)
    yield harness
    harness.close()


def _blob_files(harness: ApiHarness) -> list[str]:
    root: Path = harness.store.root / "blobs"
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def _export(harness: ApiHarness) -> bytes:
    result = harness.client.simulate_get("/models/ai/tiny/export")
    assert result.status_code == 200
    return result.content


def _post(harness: ApiHarness, body: _Body, length: int | None) -> object:
    headers = {"Content-Type": "application/x-tar"}
    extras: dict[str, object] = {"wsgi.input": body}
    if length is not None:
        headers["Content-Length"] = str(length)
    return harness.client.simulate_post("/models/load", headers=headers, extras=extras)


def test_content_length_over_the_cap_is_refused_before_reading(harness: ApiHarness) -> None:
    before = _blob_files(harness)
    body = _Body(b"\0" * (CAP + 1))
    result = _post(harness, body, CAP + 1)
    error = assert_error_shape(result, 413, "request_too_large")  # type: ignore[arg-type]
    assert "1 MiB" in error["message"] and "DMR_MAX_LOAD_SIZE" in error["message"]
    assert body.read_bytes == 0
    assert _blob_files(harness) == before


def _big_archive() -> bytes:
    """A well-formed model archive of about 3 MiB (a GGUF layer of 3 MiB)."""
    artifact = make_artifact("big", layers=[(mediatypes.GGUF, b"w" * (3 * CAP))])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for digest, data in artifact.blobs.items():
            info = tarfile.TarInfo(f"blobs/sha256/{digest[7:]}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("manifest.json")
        info.size = len(artifact.manifest_bytes)
        tar.addfile(info, io.BytesIO(artifact.manifest_bytes))
    return buffer.getvalue()


def test_chunked_upload_over_the_cap_is_cut_off_and_leaves_nothing(harness: ApiHarness) -> None:
    """No Content-Length (chunked): the cap applies as the body is read."""
    before = _blob_files(harness)
    body = _Body(_big_archive())
    result = _post(harness, body, None)
    assert_error_shape(result, 413, "request_too_large")  # type: ignore[arg-type]
    assert body.read_bytes <= CAP + 65536
    assert _blob_files(harness) == before
    assert [model["id"] for model in json.loads(harness.client.simulate_get("/models").text)] == [
        harness.record.id
    ]


def test_an_archive_under_the_cap_loads(harness: ApiHarness) -> None:
    archive = _export(harness)
    assert len(archive) < CAP
    assert harness.client.simulate_delete("/models/purge").status_code == 200
    result = _post(harness, _Body(archive), None)
    assert result.status_code == 200, result.text  # type: ignore[attr-defined]
    (model,) = json.loads(harness.client.simulate_get("/models").text)
    assert model["id"] == harness.record.id


def test_a_corrupt_archive_is_a_400_that_stores_nothing(harness: ApiHarness) -> None:
    archive = bytearray(_export(harness))
    assert harness.client.simulate_delete("/models/purge").status_code == 200
    before = _blob_files(harness)
    archive[2048] ^= 0xFF  # inside the first blob: it no longer hashes to its name
    result = _post(harness, _Body(bytes(archive)), len(archive))
    error = assert_error_shape(result, 400, None)  # type: ignore[arg-type]
    assert "hash" in error["message"] or "tar" in error["message"]
    assert _blob_files(harness) == before
