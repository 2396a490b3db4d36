"""Tar transport of models: export and streamed load (DMR spec section 3.6)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from orchestrator.errors import InvalidRequestError, StoreError
from orchestrator.store import mediatypes
from orchestrator.store.store import Store
from orchestrator.store.tarball import export_tar, load_tar
from tests.support.store_models import (
    FakeArtifact,
    add_artifact,
    digest_of,
    make_artifact,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "source")


@pytest.fixture
def target(tmp_path: Path) -> Store:
    return Store(tmp_path / "target")


class _Stream(io.RawIOBase):
    """A read-only, non-seekable stream, like a request body."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        chunk = self._buffer.read(min(len(buffer), 65536))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _artifact() -> FakeArtifact:
    return make_artifact(
        "m",
        layers=[
            (mediatypes.GGUF, b"gguf weights"),
            (mediatypes.LICENSE, b"license text"),
            (mediatypes.CHAT_TEMPLATE, b"{{ template }}"),
        ],
    )


def _tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    """Build an archive: ``(name, data)`` files, ``(name, None)`` directories."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o666
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _entries_of(artifact: FakeArtifact) -> list[tuple[str, bytes | None]]:
    entries: list[tuple[str, bytes | None]] = [("blobs", None), ("blobs/sha256", None)]
    entries += [
        (f"blobs/sha256/{digest_of(data)[7:]}", data) for _mt, data, _notes in artifact.layers
    ]
    entries.append((f"blobs/sha256/{artifact.config_digest[7:]}", artifact.config_bytes))
    entries.append(("manifest.json", artifact.manifest_bytes))
    return entries


def test_export_writes_dmr_entries_in_order(store: Store) -> None:
    artifact = _artifact()
    record = add_artifact(store, artifact, tags=["ai/m"])
    buffer = io.BytesIO()
    export_tar(store, record, buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r") as tar:
        members = tar.getmembers()
        names = [member.name for member in members]
        assert names == [
            "blobs",
            "blobs/sha256",
            *(f"blobs/sha256/{digest[7:]}" for digest in artifact.layer_digests),
            f"blobs/sha256/{artifact.config_digest[7:]}",
            "manifest.json",
        ]
        assert [member.isdir() for member in members[:2]] == [True, True]
        assert {member.mode for member in members[:2]} == {0o755}
        assert {member.mode for member in members[2:]} == {0o666}
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None and manifest.read() == artifact.manifest_bytes
        for digest, data in artifact.blobs.items():
            blob = tar.extractfile(f"blobs/sha256/{digest[7:]}")
            assert blob is not None and blob.read() == data


def test_export_then_load_round_trips_without_tags(store: Store, target: Store) -> None:
    record = add_artifact(store, _artifact(), tags=["ai/m"])
    buffer = io.BytesIO()
    export_tar(store, record, buffer)
    loaded = load_tar(target, _Stream(buffer.getvalue()))
    assert loaded.id == record.id
    assert loaded.tags == ()
    assert loaded.files == record.files
    for digest in record.files:
        assert target.read_blob(digest) == store.read_blob(digest)
    assert [model.id for model in target.list_models()] == [record.id]
    assert [path.name for path in (target.root / "blobs" / "sha256").iterdir()
            if path.name.endswith(".incomplete")] == []
    again = load_tar(target, _Stream(buffer.getvalue()))
    assert again.id == record.id and len(target.list_models()) == 1


def test_export_refuses_before_writing_when_a_blob_is_missing(store: Store) -> None:
    record = add_artifact(store, _artifact())
    store.blob_path(record.files[1]).unlink()
    buffer = io.BytesIO()
    with pytest.raises(StoreError, match="missing"):
        export_tar(store, record, buffer)
    assert buffer.getvalue() == b""


def test_load_accepts_go_and_dot_slash_names(target: Store) -> None:
    artifact = _artifact()
    entries = [(f"./{name}", data) for name, data in _entries_of(artifact)]
    record = load_tar(target, io.BytesIO(_tar([(".", None), *entries])))
    assert record.id == artifact.model_id


def test_load_reports_progress_per_eight_mebibytes(target: Store) -> None:
    big = bytes(range(256)) * (10 * 4096)  # 10 MiB
    artifact = make_artifact("big", layers=[(mediatypes.GGUF, big)])
    events: list[dict[str, object]] = []
    load_tar(target, _Stream(_tar(_entries_of(artifact))), events.append)
    layer_events = [event for event in events if event["layer"]["id"] == digest_of(big)]  # type: ignore[index]
    assert [event["layer"]["current"] for event in layer_events] == [8 << 20, len(big)]  # type: ignore[index]
    assert layer_events[-1] == {
        "type": "progress",
        "message": "Transferred: 10.00 MB",
        "total": len(big),
        "layer": {"id": digest_of(big), "size": len(big), "current": len(big)},
        "mode": "load",
    }


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("/etc/passwd", "absolute"),
        ("../escape", "'..'"),
        ("blobs/../../escape", "'..'"),
        ("notes.txt", "unexpected name"),
        ("blobs/sha256/not-hex", "unexpected name"),
        ("blobs/sha256/" + "a" * 63, "not a valid digest"),
        ("blobs/md5/" + "a" * 32, "unexpected name"),
        ("manifests/sha256/" + "a" * 64, "unexpected name"),
    ],
)
def test_load_rejects_unexpected_entries(target: Store, name: str, why: str) -> None:
    archive = _tar([*_entries_of(_artifact())[:-1], (name, b"x"), ("manifest.json", b"{}")])
    with pytest.raises(InvalidRequestError, match=why):
        load_tar(target, io.BytesIO(archive))
    assert target.list_models() == []


def test_load_rejects_links(target: Store) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(InvalidRequestError, match="not a regular file"):
        load_tar(target, io.BytesIO(buffer.getvalue()))


def test_load_rejects_a_blob_that_does_not_match_its_name(target: Store) -> None:
    wrong = "blobs/sha256/" + digest_of(b"expected")[7:]
    with pytest.raises(InvalidRequestError, match="does not hash to its name"):
        load_tar(target, io.BytesIO(_tar([(wrong, b"tampered")])))
    assert not target.has_blob(digest_of(b"expected"))
    assert list((target.root / "blobs" / "sha256").iterdir()) == []


def test_load_needs_a_manifest_and_every_blob(target: Store) -> None:
    artifact = _artifact()
    entries = _entries_of(artifact)
    without_license = [entry for entry in entries if entry[1] != b"license text"]
    with pytest.raises(InvalidRequestError, match="lacks blob"):
        load_tar(target, io.BytesIO(_tar(without_license)))
    with pytest.raises(InvalidRequestError, match="no 'manifest.json'"):
        load_tar(target, io.BytesIO(_tar(entries[:-1])))
    with pytest.raises(InvalidRequestError, match="invalid model manifest"):
        load_tar(target, io.BytesIO(_tar([("manifest.json", b"[]")])))
    assert target.list_models() == []


@pytest.mark.parametrize("cut", [700, 1536, 3000])
def test_load_rejects_truncated_archives(target: Store, cut: int) -> None:
    archive = _tar(_entries_of(make_artifact("t", layers=[(mediatypes.GGUF, b"w" * 4000)])))
    with pytest.raises(InvalidRequestError):
        load_tar(target, _Stream(archive[:cut]))
    assert target.list_models() == []


@pytest.mark.parametrize("body", [b"", b"this is not a tar archive at all" * 40])
def test_load_rejects_garbage(target: Store, body: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        load_tar(target, io.BytesIO(body))


@pytest.mark.parametrize("where", ["manifest", "config"])
def test_load_refuses_json_nested_deeper_than_the_parser_goes(target: Store, where: str) -> None:
    """A hostile archive whose manifest or config blob nests 200,000 arrays is a clear 400,
    never a RecursionError rendered as a 500."""
    import json

    artifact = _artifact()
    nested = b"[" * 200_000 + b"]" * 200_000
    entries = _entries_of(artifact)
    if where == "manifest":
        entries[-1] = ("manifest.json", nested)
    else:
        manifest = json.loads(artifact.manifest_bytes)
        manifest["config"]["digest"] = digest_of(nested)
        manifest["config"]["size"] = len(nested)
        entries = [e for e in entries if e[0] != f"blobs/sha256/{artifact.config_digest[7:]}"]
        entries[-1:-1] = [(f"blobs/sha256/{digest_of(nested)[7:]}", nested)]
        entries[-1] = ("manifest.json", json.dumps(manifest).encode())
    with pytest.raises(InvalidRequestError, match="nest|not valid JSON"):
        load_tar(target, _Stream(_tar(entries)))


# --- a rejected archive leaves the store as it was (issue 12) -----------------------------------


def _blob_files(store: Store) -> list[str]:
    """Every file under blobs/, as relative paths (temporary and partial files included)."""
    root = store.root / "blobs"
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def _with_config(artifact: FakeArtifact, config_bytes: bytes) -> list[tuple[str, bytes | None]]:
    """The archive of ``artifact`` with its config blob replaced by ``config_bytes``."""
    import json

    manifest = json.loads(artifact.manifest_bytes)
    manifest["config"]["digest"] = digest_of(config_bytes)
    manifest["config"]["size"] = len(config_bytes)
    entries = [
        entry for entry in _entries_of(artifact)
        if entry[0] != f"blobs/sha256/{artifact.config_digest[7:]}"
    ]
    entries[-1:-1] = [(f"blobs/sha256/{digest_of(config_bytes)[7:]}", config_bytes)]
    entries[-1] = ("manifest.json", json.dumps(manifest).encode())
    return entries


def _rejected_archives() -> dict[str, bytes]:
    artifact = make_artifact(
        "fresh", layers=[(mediatypes.GGUF, b"fresh weights" * 100), (mediatypes.LICENSE, b"MIT")]
    )
    entries = _entries_of(artifact)
    gguf, license_entry = entries[2], entries[3]
    whole = _tar(entries)
    wrong = (f"blobs/sha256/{digest_of(b'expected')[7:]}", b"tampered")
    return {
        # The GGUF layer is complete and good when the next entry fails.
        "digest mismatch": _tar([*entries[:3], wrong, *entries[3:]]),
        "truncated": whole[: whole.index(b"MIT") + 1],
        "bad manifest": _tar([*entries[:-1], ("manifest.json", b'{"schemaVersion": 2}')]),
        "missing blob": _tar([entry for entry in entries if entry is not license_entry]),
        "unexpected entry": _tar([*entries[:-1], ("notes.txt", b"x"), entries[-1]]),
        "config not json": _tar(_with_config(artifact, b"not json")),
        "no manifest": _tar(entries[:-1]),
        "gguf only": _tar([gguf]),
    }


@pytest.mark.parametrize("case", sorted(_rejected_archives()))
def test_a_rejected_archive_leaves_the_blob_directory_as_it_was(target: Store, case: str) -> None:
    """Nothing of a refused upload stays: no blob, no temporary or partial file."""
    add_artifact(target, _artifact(), tags=["ai/m"])
    before, models = _blob_files(target), target.list_models()
    with pytest.raises((InvalidRequestError, StoreError)):
        load_tar(target, _Stream(_rejected_archives()[case]))
    assert _blob_files(target) == before
    assert target.list_models() == models


def test_a_blob_another_model_uses_survives_a_rejected_import(target: Store) -> None:
    shared = _artifact()
    add_artifact(target, shared, tags=["ai/m"])
    reused = [layer for layer in shared.layers if layer[0] == mediatypes.LICENSE]
    artifact = make_artifact(
        "other",
        layers=[(mediatypes.GGUF, b"other weights"), (reused[0][0], reused[0][1])],
    )
    # Registering fails after the blobs went into place: the shared license must stay.
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        load_tar(target, _Stream(_tar(_with_config(artifact, b"{broken"))))
    assert target.has_blob(digest_of(b"license text"))
    assert not target.has_blob(digest_of(b"other weights"))
    for digest in target.resolve("ai/m").files:
        assert target.has_blob(digest)
    assert target.bundle(target.resolve("ai/m")).gguf_path.is_file()


def test_a_blob_stored_meanwhile_by_another_import_survives(target: Store, store: Store) -> None:
    """Two imports of the same blob: the one that fails must not delete the other's copy."""
    weights = b"shared weights" * 1000
    ours = make_artifact("ours", layers=[(mediatypes.GGUF, weights)])
    theirs = make_artifact("theirs", layers=[(mediatypes.GGUF, weights)])
    their_archive = io.BytesIO()
    export_tar(store, add_artifact(store, theirs), their_archive)
    loaded: list[str] = []

    def meanwhile(event: dict[str, object]) -> None:
        # Our copy of the weights is staged: the other import now stores and registers them.
        layer = event["layer"]
        if not loaded and isinstance(layer, dict) and layer["id"] == digest_of(weights):
            loaded.append(load_tar(target, _Stream(their_archive.getvalue())).id)

    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        load_tar(target, _Stream(_tar(_with_config(ours, b"[unterminated"))), meanwhile)
    assert loaded == [theirs.model_id]
    assert target.read_blob(digest_of(weights)) == weights
    assert [model.id for model in target.list_models()] == [theirs.model_id]
    assert not [name for name in _blob_files(target) if ".tmp-" in name or "incomplete" in name]


def test_capped_reader_refuses_the_byte_after_the_limit() -> None:
    from orchestrator.errors import RequestTooLargeError
    from orchestrator.store.tarball import CappedReader

    exact = CappedReader(io.BytesIO(b"x" * 100), 100)
    assert exact.read() == b"x" * 100 and exact.read() == b""
    over = CappedReader(io.BytesIO(b"x" * 101), 100)
    assert over.read(60) == b"x" * 60
    with pytest.raises(RequestTooLargeError, match="larger than the 100 B"):
        over.read(60)


def test_an_archive_over_the_cap_is_refused_while_streaming(target: Store) -> None:
    from orchestrator.errors import RequestTooLargeError
    from orchestrator.store.tarball import CappedReader

    big = make_artifact("big", layers=[(mediatypes.GGUF, b"w" * (3 << 20))])
    archive = _tar(_entries_of(big))
    before = _blob_files(target)
    source = _Stream(archive)
    with pytest.raises(RequestTooLargeError):
        load_tar(target, CappedReader(source, 1 << 20))
    assert _blob_files(target) == before
    assert source._buffer.tell() <= (1 << 20) + 65536  # stopped reading at the cap
