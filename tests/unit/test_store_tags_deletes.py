"""Tags and deletes in the local store, as DMR does them (spec section 2.3)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import ConflictError, InvalidReferenceError, ModelNotFoundError
from orchestrator.store import mediatypes
from orchestrator.store.records import ModelRecord
from orchestrator.store.store import Store
from tests.support.processes import stop_process
from tests.support.store_models import add_artifact, add_model, make_artifact


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def _tags(store: Store, record: ModelRecord) -> list[str]:
    return list(store.resolve(record.id).tags)


def _index_bytes(store: Store) -> bytes:
    return (store.root / "models.json").read_bytes()


# -- tags ------------------------------------------------------------------------------------


def test_tag_returns_the_normalised_identity(store: Store) -> None:
    record = add_model(store, "m", tags=["ai/m"])
    assert store.tag("ai/m", "MyModel") == "docker.io/ai/mymodel:latest"
    assert store.tag("ai/m", "myorg/m:V1") == "docker.io/myorg/m:V1"
    assert store.tag("ai/m", "hf.co/Org/Repo:Q4_K_M") == "huggingface.co/org/repo:Q4_K_M"
    assert store.tag("ai/m", "127.0.0.1:5000/team/m:x@sha256:" + "a" * 64) == (
        "127.0.0.1:5000/team/m:x"
    )
    assert _tags(store, record) == [
        "docker.io/ai/m:latest",
        "docker.io/ai/mymodel:latest",
        "docker.io/myorg/m:V1",
        "huggingface.co/org/repo:Q4_K_M",
        "127.0.0.1:5000/team/m:x",
    ]


def test_a_tag_moves_between_models(store: Store) -> None:
    first = add_model(store, "a", tags=["ai/shared:v1", "ai/a"])
    second = add_model(store, "b", tags=["ai/b"])
    store.tag("ai/b", "shared:v1")
    assert _tags(store, first) == ["docker.io/ai/a:latest"]
    assert _tags(store, second) == ["docker.io/ai/b:latest", "docker.io/ai/shared:v1"]
    third = add_model(store, "c", tags=["ai/shared:v1"])
    assert _tags(store, second) == ["docker.io/ai/b:latest"]
    assert _tags(store, third) == ["docker.io/ai/shared:v1"]


def test_retagging_with_the_same_tag_is_a_no_op(store: Store) -> None:
    add_model(store, "m", tags=["ai/m:latest"])
    before = _index_bytes(store)
    assert store.tag("ai/m", "ai/m:latest") == "docker.io/ai/m:latest"
    assert store.tag("ai/m", "docker.io/ai/m") == "docker.io/ai/m:latest"
    assert _index_bytes(store) == before


def test_tag_source_may_be_an_id_short_id_or_partial_name(store: Store) -> None:
    record = add_model(store, "m", tags=["myorg/smollm2:v1"])
    store.tag(record.id, "one")
    store.tag(record.short_id, "two")
    store.tag(record.id[7:], "three")
    store.tag("smollm2", "four")
    assert _tags(store, record) == [
        "docker.io/myorg/smollm2:v1",
        "docker.io/ai/one:latest",
        "docker.io/ai/two:latest",
        "docker.io/ai/three:latest",
        "docker.io/ai/four:latest",
    ]


def test_tag_errors(store: Store) -> None:
    record = add_model(store, "m", tags=["ai/m"])
    before = _index_bytes(store)
    with pytest.raises(ModelNotFoundError):
        store.tag("ai/absent", "new")
    with pytest.raises(InvalidReferenceError):
        store.tag("ai/m", "bad tag")
    with pytest.raises(InvalidReferenceError):
        store.tag("ai/m", "ai/m:-bad")
    with pytest.raises(InvalidReferenceError, match="model ID"):
        store.tag("ai/m", record.id)
    with pytest.raises(InvalidReferenceError):
        store.tag("bad ref", "new")
    assert _index_bytes(store) == before


def test_old_unqualified_tags_are_matched_and_moved(store: Store) -> None:
    first = add_model(store, "a")
    second = add_model(store, "b", tags=["ai/b"])
    index_file = store.root / "models.json"
    document = json.loads(index_file.read_text())
    document["models"][0]["tags"] = ["ai/old:latest"]
    index_file.write_text(json.dumps(document))
    store.tag("ai/b", "docker.io/ai/old:latest")
    assert _tags(store, first) == []
    assert _tags(store, second) == ["docker.io/ai/b:latest", "docker.io/ai/old:latest"]


# -- deletes ---------------------------------------------------------------------------------


def test_delete_by_tag_only_untags_while_other_tags_remain(store: Store) -> None:
    record = add_model(store, "m", tags=["ai/m:v1", "ai/m:v2"])
    assert store.delete("m:v1") == [{"Untagged": "docker.io/ai/m:v1"}]
    assert _tags(store, record) == ["docker.io/ai/m:v2"]
    assert store.delete("ai/m:v2", force=True) == [
        {"Untagged": "docker.io/ai/m:v2"},
        {"Deleted": record.id},
    ]
    assert store.list_models() == []


def test_delete_by_tag_keeps_the_model_even_with_force(store: Store) -> None:
    record = add_model(store, "m", tags=["a", "b"])
    assert store.delete("a", force=True) == [{"Untagged": "docker.io/ai/a:latest"}]
    assert store.resolve(record.id).tags == ("docker.io/ai/b:latest",)


def test_delete_of_the_last_tag_removes_every_file(store: Store) -> None:
    artifact = make_artifact(
        "m", layers=[(mediatypes.GGUF, b"weights"), (mediatypes.LICENSE, b"MIT")]
    )
    record = add_artifact(store, artifact, tags=["ai/m"])
    bundle = store.bundle(record)
    assert store.delete("ai/m") == [{"Untagged": "docker.io/ai/m:latest"}, {"Deleted": record.id}]
    assert not (store.root / "manifests" / "sha256" / record.id[7:]).exists()
    assert not bundle.root.exists()
    for digest in record.files:
        assert not store.has_blob(digest)
    assert json.loads(_index_bytes(store)) == {"models": []}
    with pytest.raises(ModelNotFoundError):
        store.resolve(record.id)


def test_delete_by_id_with_several_tags_needs_force(store: Store) -> None:
    record = add_model(store, "m", tags=["ai/m:v1", "ai/m:v2"])
    before = _index_bytes(store)
    for ref in (record.id, record.short_id, record.id[7:], f"ai/m@{record.id}"):
        with pytest.raises(ConflictError) as caught:
            store.delete(ref)
        assert caught.value.status == 409
        assert "docker.io/ai/m:v1" in caught.value.message
        assert "docker.io/ai/m:v2" in caught.value.message
        assert "force" in caught.value.message
    assert _index_bytes(store) == before
    assert store.delete(record.short_id, force=True) == [
        {"Untagged": "docker.io/ai/m:v1"},
        {"Untagged": "docker.io/ai/m:v2"},
        {"Deleted": record.id},
    ]


@pytest.mark.parametrize("tags", [[], ["ai/m"]])
def test_delete_by_id_with_at_most_one_tag(store: Store, tags: list[str]) -> None:
    record = add_model(store, "m", tags=tags)
    expected = [{"Untagged": "docker.io/ai/m:latest"}] if tags else []
    assert store.delete(record.id) == [*expected, {"Deleted": record.id}]
    assert store.list_models() == []


def test_delete_keeps_blobs_other_models_use(store: Store) -> None:
    shared = (mediatypes.GGUF, b"shared weights")
    first = add_artifact(
        store, make_artifact("a", layers=[shared, (mediatypes.LICENSE, b"A")]), tags=["a"]
    )
    second = add_artifact(
        store, make_artifact("b", layers=[shared, (mediatypes.LICENSE, b"B")]), tags=["b"]
    )
    store.delete("a")
    assert store.has_blob(first.files[0])
    assert not store.has_blob(first.files[1])
    assert not store.has_blob(first.files[2])
    assert store.resolve("b").id == second.id
    assert store.bundle(second).gguf_path.read_bytes() == b"shared weights"


def test_delete_errors(store: Store) -> None:
    add_model(store, "m", tags=["ai/m"])
    with pytest.raises(ModelNotFoundError):
        store.delete("ai/absent")
    with pytest.raises(ModelNotFoundError):
        store.delete("sha256:" + "0" * 64)
    with pytest.raises(InvalidReferenceError):
        store.delete("../../m")
    assert len(store.list_models()) == 1


def test_delete_by_an_old_unqualified_tag(store: Store) -> None:
    record = add_model(store, "m")
    index_file = store.root / "models.json"
    document = json.loads(index_file.read_text())
    document["models"][0]["tags"] = ["ai/m:latest"]
    index_file.write_text(json.dumps(document))
    assert store.delete("m") == [{"Untagged": "docker.io/ai/m:latest"}, {"Deleted": record.id}]


_READER = """
import hashlib, sys
handle = open(sys.argv[1], "rb")
print("open", flush=True)
sys.stdin.readline()
print(hashlib.sha256(handle.read()).hexdigest(), flush=True)
"""


@pytest.fixture
def reader_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop_process(proc)


def test_delete_while_another_process_reads_the_bundle(
    store: Store, reader_procs: list[subprocess.Popen[bytes]]
) -> None:
    weights = b"weights in use " * 10_000
    record = add_artifact(store, make_artifact("m", layers=[(mediatypes.GGUF, weights)]), ["m"])
    bundle = store.bundle(record)
    proc = subprocess.Popen(
        [sys.executable, "-c", _READER, str(bundle.gguf_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    reader_procs.append(proc)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == b"open\n"
    store.delete("m")
    assert not bundle.gguf_path.exists()
    out, _err = proc.communicate(b"go\n", timeout=30)
    assert out.decode().strip() == hashlib.sha256(weights).hexdigest()
