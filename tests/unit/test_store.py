"""The local model store: layout, blobs, models, lookups, bundles, locking."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import (
    DigestMismatchError,
    InvalidReferenceError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    StoreError,
    UnsupportedModelError,
)
from orchestrator.store import mediatypes
from orchestrator.store.layout import StoreLock, link_or_copy, open_incomplete
from orchestrator.store.store import Store
from tests.support.processes import stop_process
from tests.support.store_models import (
    CREATED_UNIX,
    add_artifact,
    add_model,
    digest_of,
    make_artifact,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def _temp_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if ".tmp-" in path.name]


# -- layout ----------------------------------------------------------------------------------


def test_new_store_has_dmr_layout(store: Store) -> None:
    root = store.root
    assert (root / "layout.json").read_bytes() == b'{\n  "version": "1.0.0"\n}'
    assert (root / "models.json").read_bytes() == b'{\n  "models": []\n}'
    assert (root / "blobs" / "sha256").is_dir()
    assert (root / "manifests" / "sha256").is_dir()
    assert (root / "layout.json").stat().st_mode & 0o777 == 0o644


def test_models_json_is_written_as_dmr_writes_it(store: Store) -> None:
    tagged = add_model(store, "a", tags=["ai/a"])
    untagged = add_model(store, "b")
    expected = (
        "{\n"
        '  "models": [\n'
        "    {\n"
        f'      "id": "{tagged.id}",\n'
        '      "tags": [\n'
        '        "docker.io/ai/a:latest"\n'
        "      ],\n"
        '      "files": [\n'
        f'        "{tagged.files[0]}",\n'
        f'        "{tagged.files[1]}"\n'
        "      ]\n"
        "    },\n"
        "    {\n"
        f'      "id": "{untagged.id}",\n'
        '      "tags": null,\n'
        '      "files": [\n'
        f'        "{untagged.files[0]}",\n'
        f'        "{untagged.files[1]}"\n'
        "      ]\n"
        "    }\n"
        "  ]\n"
        "}"
    )
    assert (store.root / "models.json").read_text() == expected
    assert _temp_files(store.root) == []


def test_add_model_writes_manifest_index_and_files_order(store: Store) -> None:
    artifact = make_artifact(
        "m",
        layers=[(mediatypes.GGUF, b"weights"), (mediatypes.LICENSE, b"MIT")],
    )
    record = add_artifact(store, artifact, tags=["ai/m:v1"])
    assert record.id == digest_of(artifact.manifest_bytes)
    manifest_file = store.root / "manifests" / "sha256" / record.id[7:]
    assert manifest_file.read_bytes() == artifact.manifest_bytes
    assert manifest_file.stat().st_mode & 0o777 == 0o644
    assert record.files == (*artifact.layer_digests, artifact.config_digest)
    assert record.tags == ("docker.io/ai/m:v1",)
    assert record.manifest_bytes == artifact.manifest_bytes


def test_add_model_is_idempotent(store: Store) -> None:
    artifact = make_artifact("m")
    first = add_artifact(store, artifact, tags=["ai/m"])
    before = (store.root / "models.json").read_bytes()
    second = store.add_model(artifact.manifest_bytes, ["ai/m"])
    assert second == first
    assert (store.root / "models.json").read_bytes() == before
    assert [record.id for record in store.list_models()] == [first.id]


@pytest.mark.parametrize("missing", ["layer", "config"])
def test_add_model_requires_every_blob(store: Store, missing: str) -> None:
    artifact = make_artifact("m")
    if missing == "layer":
        store.write_blob(artifact.config_bytes)
    else:
        store.write_blob(artifact.layers[0][1])
    with pytest.raises(StoreError, match="not in the store"):
        store.add_model(artifact.manifest_bytes)
    assert store.list_models() == []
    assert list((store.root / "manifests" / "sha256").iterdir()) == []


@pytest.mark.parametrize(
    "manifest",
    [
        b"not json",
        b"[1, 2]",
        b'{"schemaVersion": 2, "layers": []}',
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "x", "size": 1, "digest": "sha256:00"},'
            b' "layers": []}'
        ),
        b'{"schemaVersion": 2, "config": {"mediaType": "x", "size": 1, "digest": "sha256:'
        + b"a" * 64
        + b'"}, "layers": {}}',
        b'{"schemaVersion": 2, "config": {"mediaType": "x", "size": 1, "digest": "sha256:'
        + b"a" * 64
        + b'"}, "layers": [{"mediaType": "x", "size": -1, "digest": "sha256:'
        + b"b" * 64
        + b'"}]}',
        b'{"schemaVersion": 2, "config": {"mediaType": "x", "size": 1, "digest": "sha256:'
        + b"a" * 64
        + b'"}, "layers": [{"mediaType": "x", "size": 1, "digest": "sha256:../../etc"}]}',
    ],
)
def test_add_model_rejects_malformed_manifests(store: Store, manifest: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="invalid model manifest"):
        store.add_model(manifest)


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        (b'{"schemaVersion": 1, "config": {}, "layers": []}', "schema version 1"),
        (
            b'{"schemaVersion": 2, "mediaType": "' + mediatypes.OCI_INDEX.encode() + b'",'
            b' "manifests": []}',
            "image index",
        ),
    ],
)
def test_add_model_refuses_manifests_that_are_not_model_artifacts(
    store: Store, manifest: bytes, reason: str
) -> None:
    with pytest.raises(UnsupportedModelError, match=reason):
        store.add_model(manifest)


def test_add_model_rejects_a_config_blob_that_is_not_json(store: Store) -> None:
    artifact = make_artifact("m", config={"config": {}})
    store.write_blob(artifact.layers[0][1])
    bad = b"not json"
    manifest = json.loads(artifact.manifest_bytes)
    manifest["config"]["digest"] = store.write_blob(bad)
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        store.add_model(json.dumps(manifest).encode())


# -- blobs -----------------------------------------------------------------------------------


def test_write_and_read_blob(store: Store) -> None:
    digest = store.write_blob(b"hello")
    assert digest == digest_of(b"hello")
    assert store.has_blob(digest)
    assert store.read_blob(digest) == b"hello"
    assert store.blob_path(digest).stat().st_mode & 0o777 == 0o644
    assert store.write_blob(b"hello") == digest
    with pytest.raises(NotFoundError):
        store.read_blob(digest_of(b"absent"))


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../../etc/passwd",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "md5:" + "a" * 32,
        "sha256/" + "a" * 64,
        "../sha256:" + "a" * 64,
        "",
    ],
)
def test_blob_paths_refuse_unsafe_digests(store: Store, digest: str) -> None:
    with pytest.raises(InvalidRequestError):
        store.blob_path(digest)
    with pytest.raises(InvalidRequestError):
        store.has_blob(digest)


def test_sha512_blob_paths_are_allowed(store: Store) -> None:
    digest = "sha512:" + "c" * 128
    assert store.blob_path(digest) == store.root / "blobs" / "sha512" / ("c" * 128)
    assert store.incomplete_path(digest).name == "c" * 128 + ".incomplete"


def test_import_blob_file_hashes_and_verifies(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "weights.gguf"
    source.write_bytes(b"x" * 3_000_000)
    digest = store.import_blob_file(source)
    assert digest == digest_of(source.read_bytes())
    assert store.read_blob(digest) == source.read_bytes()
    assert store.import_blob_file(source, digest) == digest
    other = tmp_path / "other.gguf"
    other.write_bytes(b"different")
    with pytest.raises(DigestMismatchError):
        store.import_blob_file(other, digest_of(b"something else"))
    assert not store.has_blob(digest_of(b"different"))
    assert _temp_files(store.root) == []


def test_import_of_a_missing_file_is_a_store_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot import"):
        store.import_blob_file(tmp_path / "absent.gguf")
    assert _temp_files(store.root) == []


def test_commit_incomplete(store: Store) -> None:
    good = digest_of(b"payload")
    store.incomplete_path(good).write_bytes(b"payload")
    assert store.commit_incomplete(good) == store.blob_path(good)
    assert store.read_blob(good) == b"payload"
    assert not store.incomplete_path(good).exists()

    bad = digest_of(b"expected")
    store.incomplete_path(bad).write_bytes(b"corrupted")
    with pytest.raises(DigestMismatchError):
        store.commit_incomplete(bad)
    assert not store.incomplete_path(bad).exists()
    assert not store.has_blob(bad)

    with pytest.raises(StoreError, match="no partial download"):
        store.commit_incomplete(bad)


def test_open_incomplete_never_shares_a_file_between_writers(store: Store) -> None:
    shared = store.incomplete_path(digest_of(b"blob"))
    shared.write_bytes(b"stale partial content")
    first, first_path = open_incomplete(shared)
    with first:
        assert first_path == shared and shared.read_bytes() == b""
        second, second_path = open_incomplete(shared)
        with second:
            assert second_path != shared
            assert second_path.name.endswith(".incomplete")
        second_path.unlink()
    third, third_path = open_incomplete(shared)
    with third:
        assert third_path == shared


def test_init_removes_incomplete_files_older_than_a_week(tmp_path: Path) -> None:
    root = tmp_path / "models"
    store = Store(root)
    old = store.incomplete_path(digest_of(b"old"))
    fresh = store.incomplete_path(digest_of(b"fresh"))
    old.write_bytes(b"o")
    fresh.write_bytes(b"f")
    eight_days_ago = time.time() - 8 * 24 * 3600
    os.utime(old, (eight_days_ago, eight_days_ago))
    Store(root)
    assert not old.exists()
    assert fresh.exists()


# -- lookups ---------------------------------------------------------------------------------


@pytest.fixture
def test_model(store: Store) -> str:
    return add_model(store, "test-model", tags=["ai/test-model"]).id


@pytest.mark.parametrize(
    "spelling",
    [
        "test-model",
        "test-model:latest",
        "ai/test-model",
        "ai/test-model:latest",
        "docker.io/ai/test-model:latest",
        "docker.io/ai/test-model",
        "Test-Model",
        "  ai/test-model  ",
        "test-model@{id}",
        "ai/test-model@{id}",
        "docker.io/ai/test-model@{id}",
        "other/name@{id}",
        "{id}",
        "{short}",
        "{hex}",
    ],
)
def test_resolve_accepts_every_spelling(store: Store, test_model: str, spelling: str) -> None:
    ref = spelling.format(id=test_model, short=test_model[7:19], hex=test_model[7:])
    assert store.resolve(ref).id == test_model


def test_resolve_unknown_model_names_the_pull_command(store: Store, test_model: str) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        store.resolve("x")
    assert caught.value.message == (
        "model 'ai/x:latest' is not in the local store; pull it first (docker model pull ai/x)"
    )
    with pytest.raises(ModelNotFoundError, match="myreg.io/org/m:v2"):
        store.resolve("myreg.io/org/m:v2")
    with pytest.raises(ModelNotFoundError, match="docker model ls"):
        store.resolve("sha256:" + "f" * 64)
    assert store.find("ai/x") is None
    assert store.find("ai/test-model") is not None


def test_invalid_reference_is_reported_before_the_index_is_read(store: Store) -> None:
    (store.root / "models.json").write_text("{broken")
    with pytest.raises(StoreError):
        store.resolve("ai/valid")
    for bad in ["", "in valid", "../etc/passwd", "ai/x@sha256:123"]:
        with pytest.raises(InvalidReferenceError):
            store.resolve(bad)


def test_twelve_hex_name_falls_back_to_a_tag(store: Store) -> None:
    record = add_model(store, "hexname", tags=["abcdef123456"])
    assert store.resolve("abcdef123456").id == record.id


def test_partial_name_fallback_only_when_asked(store: Store) -> None:
    record = add_model(store, "s", tags=["myorg/smollm2:v1"])
    with pytest.raises(ModelNotFoundError):
        store.resolve("smollm2")
    assert store.resolve("smollm2", partial=True).id == record.id
    with pytest.raises(ModelNotFoundError):
        store.resolve("smoll", partial=True)


def test_unqualified_legacy_tags_still_resolve(store: Store) -> None:
    record = add_model(store, "old")
    index_file = store.root / "models.json"
    document = json.loads(index_file.read_text())
    document["models"][0]["tags"] = ["ai/old:latest", "hf.co/org/repo:Q4_K_M"]
    index_file.write_text(json.dumps(document))
    reopened = Store(store.root)
    migrated = json.loads(index_file.read_text())["models"][0]["tags"]
    assert migrated == ["ai/old:latest", "huggingface.co/org/repo:Q4_K_M"]
    for ref in ["old", "ai/old", "docker.io/ai/old:latest", "hf.co/org/repo:Q4_K_M"]:
        assert reopened.resolve(ref).id == record.id


def test_list_models_skips_damaged_entries(store: Store) -> None:
    first = add_model(store, "a", tags=["a"])
    second = add_model(store, "b", tags=["b"])
    assert [record.id for record in store.list_models()] == [first.id, second.id]
    (store.root / "manifests" / "sha256" / first.id[7:]).unlink()
    assert [record.id for record in store.list_models()] == [second.id]
    with pytest.raises(StoreError, match="delete the model and pull it again"):
        store.resolve("a")


def test_record_api_shape(store: Store) -> None:
    record = add_model(store, "m", tags=["ai/m"])
    api = record.to_api()
    assert list(api) == ["id", "tags", "created", "config"]
    assert api["created"] == CREATED_UNIX
    assert api["tags"] == ["docker.io/ai/m:latest"]
    assert list(api["config"]) == [
        "format", "quantization", "parameters", "architecture", "size", "gguf", "context_size",
    ]
    assert list(api["config"]["gguf"]) == ["general.architecture", "general.name"]
    assert record.short_id == record.id[7:19]
    assert "tags" not in add_model(store, "n").to_api()


def test_record_without_created_and_cncf_config(store: Store) -> None:
    cncf = {
        "descriptor": {"createdAt": "2025-03-24T14:00:00+02:00", "family": "llama"},
        "modelfs": {"type": "layers", "diffIds": []},
        "config": {"architecture": "llama", "format": "GGUF", "paramSize": "8b",
                   "quantization": "Q4_K_M"},
    }
    artifact = make_artifact(
        "c",
        layers=[(mediatypes.CNCF_WEIGHT_RAW, b"raw gguf")],
        annotations=[{mediatypes.ANNOTATION_FILEPATH: "weights/model.gguf"}],
        config=cncf,
        config_media_type=mediatypes.CONFIG_CNCF,
        artifact_type=mediatypes.CNCF_MANIFEST_ARTIFACT,
    )
    record = add_artifact(store, artifact)
    assert record.created == CREATED_UNIX
    assert record.model_config == {
        "format": "gguf", "quantization": "Q4_K_M", "parameters": "8b",
        "architecture": "llama", "size": "8b",
    }
    assert len(record.gguf_layers) == 1
    bundle = store.bundle(record)
    assert bundle.gguf_path == bundle.root / "model" / "weights" / "model.gguf"
    assert bundle.gguf_path.read_bytes() == b"raw gguf"
    bare = add_artifact(store, make_artifact("bare", created=None))
    assert bare.created == 0


# -- bundles ---------------------------------------------------------------------------------


def test_bundle_hard_links_blobs(store: Store) -> None:
    artifact = make_artifact(
        "m",
        layers=[
            (mediatypes.GGUF, b"weights"),
            (mediatypes.LICENSE, b"MIT"),
            (mediatypes.CHAT_TEMPLATE, b"{{ messages }}"),
            (mediatypes.MMPROJ, b"projector"),
        ],
    )
    record = add_artifact(store, artifact)
    bundle = store.bundle(record)
    root = store.root / "bundles" / "sha256" / record.id[7:]
    assert bundle.root == root
    assert bundle.gguf_path == root / "model" / "model.gguf"
    assert bundle.mmproj_path == root / "model" / "model.mmproj"
    assert bundle.chat_template_path == root / "model" / "template.jinja"
    blob = store.blob_path(digest_of(b"weights"))
    assert bundle.gguf_path.stat().st_ino == blob.stat().st_ino
    assert bundle.chat_template_path.read_bytes() == b"{{ messages }}"
    config_json = (root / "config.json").read_bytes()
    assert config_json.endswith(b"}\n") and b"\n" not in config_json[:-1]
    assert json.loads(config_json) == record.model_config == bundle.config
    assert sorted(path.name for path in (root / "model").iterdir()) == [
        "model.gguf", "model.mmproj", "template.jinja",
    ]
    assert store.bundle(record) == bundle


def test_sharded_bundle_uses_numbered_names(store: Store) -> None:
    shards = [
        (mediatypes.GGUF, f"shard {number}".encode()) for number in range(1, 4)
    ]
    notes = [
        {mediatypes.ANNOTATION_FILEPATH: f"Big-Q4-0000{number}-of-00003.gguf"}
        for number in range(1, 4)
    ]
    record = add_artifact(store, make_artifact("big", layers=shards, annotations=notes))
    bundle = store.bundle(record)
    names = sorted(path.name for path in (bundle.root / "model").iterdir())
    assert names == [f"model-0000{number}-of-00003.gguf" for number in range(1, 4)]
    assert bundle.gguf_path.name == "model-00001-of-00003.gguf"
    assert bundle.gguf_path.read_bytes() == b"shard 1"


def test_v02_bundle_keeps_annotated_paths(store: Store) -> None:
    artifact = make_artifact(
        "v2",
        layers=[(mediatypes.GGUF, b"w"), (mediatypes.MODEL_FILE, b"{}")],
        annotations=[
            {mediatypes.ANNOTATION_FILEPATH: "../../Qwen-Q4_K_M.gguf"},
            {mediatypes.ANNOTATION_FILEPATH: "sub/tokenizer.json"},
        ],
        config_media_type=mediatypes.CONFIG_V02,
    )
    bundle = store.bundle(add_artifact(store, artifact))
    assert bundle.gguf_path == bundle.root / "model" / "Qwen-Q4_K_M.gguf"
    assert (bundle.root / "model" / "sub" / "tokenizer.json").read_bytes() == b"{}"


def test_corrupt_bundle_is_recreated(store: Store) -> None:
    record = add_model(store, "m")
    bundle = store.bundle(record)
    bundle.gguf_path.unlink()
    assert store.bundle(record).gguf_path.read_bytes() == store.read_blob(record.files[0])
    (bundle.root / "config.json").write_text("{truncated")
    store.bundle(record)
    assert json.loads((bundle.root / "config.json").read_text()) == record.model_config
    bundle.gguf_path.unlink()
    bundle.gguf_path.write_bytes(b"short")
    assert store.bundle(record).gguf_path.read_bytes() == store.read_blob(record.files[0])
    assert [path.name for path in bundle.root.parent.iterdir()] == [record.id[7:]]


def test_bundle_copies_when_hard_links_fail(tmp_path: Path) -> None:
    def cross_device(source: Path, target: Path) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    store = Store(tmp_path / "models", link=cross_device)
    record = add_model(store, "m")
    bundle = store.bundle(record)
    blob = store.blob_path(record.files[0])
    assert bundle.gguf_path.read_bytes() == blob.read_bytes()
    assert bundle.gguf_path.stat().st_ino != blob.stat().st_ino
    assert bundle.gguf_path.stat().st_mode & 0o777 == 0o644


def test_link_errors_other_than_cross_device_are_store_errors(tmp_path: Path) -> None:
    def no_space(source: Path, target: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    source = tmp_path / "source"
    source.write_bytes(b"x")
    with pytest.raises(StoreError, match="No space left"):
        link_or_copy(source, tmp_path / "target", link=no_space)


def test_bundle_of_a_model_without_gguf_is_unsupported(store: Store) -> None:
    artifact = make_artifact("st", layers=[(mediatypes.SAFETENSORS, b"tensors")])
    with pytest.raises(UnsupportedModelError, match="GGUF"):
        store.bundle(add_artifact(store, artifact, tags=["ai/st"]))


def test_disk_usage_counts_hard_links_once(store: Store) -> None:
    empty = store.disk_usage_bytes()
    record = add_model(store, "m")
    with_model = store.disk_usage_bytes()
    assert with_model > empty
    store.bundle(record)
    config_json = store.root / "bundles" / "sha256" / record.id[7:] / "config.json"
    assert store.disk_usage_bytes() == with_model + config_json.stat().st_size


# -- purge -----------------------------------------------------------------------------------


def test_purge_empties_the_store(store: Store) -> None:
    record = add_model(store, "m", tags=["m"])
    store.bundle(record)
    store.purge()
    assert store.list_models() == []
    assert sorted(path.name for path in store.root.iterdir()) == [
        ".lock", "blobs", "layout.json", "manifests", "models.json",
    ]
    assert list((store.root / "blobs" / "sha256").iterdir()) == []


def test_a_corrupt_index_is_reported_and_can_be_purged(store: Store) -> None:
    add_model(store, "m", tags=["m"])
    (store.root / "models.json").write_text("{not json")
    reopened = Store(store.root)
    with pytest.raises(StoreError, match="not valid JSON"):
        reopened.list_models()
    reopened.purge()
    assert reopened.list_models() == []


def test_purge_refuses_a_directory_that_is_not_a_store(tmp_path: Path) -> None:
    precious = tmp_path / "home" / "thesis.tex"
    precious.parent.mkdir()
    precious.write_text("years of work")
    store = Store(tmp_path / "home")
    assert not (tmp_path / "home" / "layout.json").exists()
    with pytest.raises(StoreError, match="refusing to purge"):
        store.purge()
    assert precious.read_text() == "years of work"


# -- locking ---------------------------------------------------------------------------------


def test_lock_is_reentrant_and_excludes_other_holders(tmp_path: Path) -> None:
    lock_file = tmp_path / ".lock"
    first = StoreLock(lock_file, timeout_seconds=5)
    second = StoreLock(lock_file, timeout_seconds=0.2)
    outcome: list[str] = []

    def contend() -> None:
        try:
            with second.hold():
                outcome.append("acquired")
        except StoreError as ex:
            outcome.append(ex.message)

    with first.hold(), first.hold():
        thread = threading.Thread(target=contend)
        thread.start()
        thread.join(timeout=10)
    assert len(outcome) == 1 and "timed out" in outcome[0]
    with second.hold():
        pass


_WORKER = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from orchestrator.store.store import Store
from tests.support.store_models import add_model
root, prefix, count, go = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
deadline = time.monotonic() + 30
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.002)
store = Store(root)
for number in range(count):
    add_model(store, f"{prefix}-{number}", tags=[f"{prefix}/model:{number}"])
"""


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop_process(proc)


def test_two_processes_adding_models_lose_nothing(
    tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    root = tmp_path / "models"
    go = tmp_path / "go"
    count = 25
    for prefix in ("left", "right"):
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(REPO_ROOT), str(root), prefix, str(count),
                 str(go)],
                stderr=subprocess.PIPE,
            )
        )
    go.touch()
    for proc in workers:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    store = Store(root)
    tags = sorted(tag for record in store.list_models() for tag in record.tags)
    expected = sorted(
        f"docker.io/{prefix}/model:{number}"
        for prefix in ("left", "right")
        for number in range(count)
    )
    assert tags == expected
    assert _temp_files(root) == []


def test_sha256_of_manifest_is_the_id(store: Store) -> None:
    record = add_model(store, "m")
    assert record.id == "sha256:" + hashlib.sha256(record.manifest_bytes).hexdigest()
    assert store.read_manifest(record.id) == record.manifest_bytes
