"""Model variants that share the source's weights: config, manifest, layers, validation."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import pytest

from orchestrator.errors import InvalidRequestError
from orchestrator.store import builder, mediatypes
from orchestrator.store.repackage import (
    MAX_TEXT_FILE_BYTES,
    Changes,
    TextFile,
    check_context_size,
    check_text,
    derive,
    repackage,
)
from orchestrator.store.store import Store

pytest.importorskip("gguf", reason="the gguf package (pip install gguf) writes the test models")
from tests.support import gguf_files

CREATED = datetime.datetime(2025, 3, 24, 12, 0, 0, tzinfo=datetime.UTC)
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("variant")
    gguf_files.write_llama_model(root / "tiny.gguf")
    (root / "LICENSE").write_text("MIT\n")
    (root / "template.jinja").write_text("{{ messages }}\n")
    return root


@pytest.fixture
def artifact(files: Path) -> builder.Artifact:
    return builder.build_gguf_artifact(
        files / "tiny.gguf",
        licenses=[files / "LICENSE"],
        chat_template=files / "template.jinja",
        context_size=2048,
        created=CREATED,
    )


def test_no_change_gives_the_same_bytes_hence_the_same_model_id(
    artifact: builder.Artifact,
) -> None:
    manifest, config, blobs = derive(artifact.manifest, artifact.config, Changes(), now=NOW)
    assert manifest == artifact.manifest_bytes
    assert config == artifact.config_bytes
    assert blobs == {}


def test_context_size_changes_only_the_config(artifact: builder.Artifact) -> None:
    manifest_bytes, config_bytes, blobs = derive(
        artifact.manifest, artifact.config, Changes(context_size=8192), now=NOW
    )
    manifest, config = json.loads(manifest_bytes), json.loads(config_bytes)
    assert manifest["layers"] == artifact.manifest["layers"]  # every weight descriptor kept
    assert manifest["config"] == {
        "mediaType": mediatypes.CONFIG_V01,
        "size": len(config_bytes),
        "digest": _sha(config_bytes),
    }
    assert config["config"]["context_size"] == 8192
    original = artifact.config
    original["config"]["context_size"] = 8192
    assert config == original  # created, gguf metadata and diff_ids untouched
    assert blobs == {}


def test_a_new_template_replaces_the_old_layer_and_its_diff_id(
    artifact: builder.Artifact,
) -> None:
    text = "{% for m in messages %}{{ m.content }}{% endfor %}"
    manifest_bytes, config_bytes, blobs = derive(
        artifact.manifest,
        artifact.config,
        Changes(chat_template=TextFile("template.jinja", text)),
        now=NOW,
    )
    manifest, config = json.loads(manifest_bytes), json.loads(config_bytes)
    types = [layer["mediaType"] for layer in manifest["layers"]]
    assert types == [mediatypes.GGUF, mediatypes.LICENSE, mediatypes.CHAT_TEMPLATE]
    template = manifest["layers"][-1]
    assert template["digest"] == _sha(text.encode())
    assert blobs == {template["digest"]: text.encode()}
    assert manifest["layers"][:2] == artifact.manifest["layers"][:2]
    assert config["rootfs"]["diff_ids"] == [
        *artifact.config["rootfs"]["diff_ids"][:2],
        template["digest"],
    ]
    annotations = template["annotations"]
    assert annotations[mediatypes.ANNOTATION_FILEPATH] == "template.jinja"
    metadata = json.loads(annotations[mediatypes.ANNOTATION_FILE_METADATA])
    assert metadata["size"] == len(text.encode()) and metadata["mtime"] == "2026-01-02T03:04:05Z"


def test_licenses_are_appended(artifact: builder.Artifact) -> None:
    manifest_bytes, config_bytes, blobs = derive(
        artifact.manifest,
        artifact.config,
        Changes(licenses=(TextFile("NOTICE", "thanks\n"),)),
        now=NOW,
    )
    layers = json.loads(manifest_bytes)["layers"]
    assert layers[:-1] == artifact.manifest["layers"]
    assert layers[-1]["mediaType"] == mediatypes.LICENSE
    assert json.loads(config_bytes)["rootfs"]["diff_ids"][-1] == layers[-1]["digest"]
    assert list(blobs.values()) == [b"thanks\n"]


def test_cncf_models_refuse_changes_but_may_be_renamed() -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "artifactType": mediatypes.CNCF_MANIFEST_ARTIFACT,
        "config": {"mediaType": mediatypes.CONFIG_CNCF, "size": 1, "digest": _sha(b"x")},
        "layers": [{"mediaType": mediatypes.CNCF_WEIGHT_GGUF, "size": 1, "digest": _sha(b"w")}],
    }
    config = {"descriptor": {"createdAt": "2025-01-01T00:00:00Z"}, "modelfs": {"diffIds": []}}
    with pytest.raises(InvalidRequestError, match="CNCF ModelPack"):
        derive(manifest, config, Changes(context_size=4096))
    derive(manifest, config, Changes())


@pytest.mark.parametrize("value", [0, -1, 2**31, True, 4096.0, "4096", None])
def test_context_size_must_be_a_positive_int32(value: object) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_context_size(value)
    assert caught.value.param == "context_size"


def test_context_size_bounds_are_inclusive() -> None:
    assert check_context_size(1) == 1
    assert check_context_size(2**31 - 1) == 2**31 - 1


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("t.jinja", b"{{ x }}", "must be text"),
        ("t.jinja", 42, "must be text"),
        ("t.jinja", "   ", "empty"),
        ("t.jinja", "a\x00b", "NUL"),
        ("t.jinja", "\ud800", "Unicode"),
        ("t.jinja", "x" * (MAX_TEXT_FILE_BYTES + 1), "at most"),
        ("../LICENSE", "MIT", "plain file name"),
        ("", "MIT", "plain file name"),
    ],
)
def test_text_files_must_be_usable_text(name: str, text: object, why: str) -> None:
    with pytest.raises(InvalidRequestError, match=why):
        check_text(name, text, param="chat_template")


def test_repackage_stores_a_variant_that_shares_the_weight_blobs(
    tmp_path: Path, artifact: builder.Artifact
) -> None:
    store = Store(tmp_path / "models")
    source = builder.store_artifact(store, artifact, ["ai/tiny:latest"])
    weights = artifact.layers[0].digest
    inode = store.blob_path(weights).stat().st_ino
    variant = repackage(
        store,
        source,
        "myorg/tiny:8k",
        Changes(context_size=8192, chat_template=TextFile("template.jinja", "{{ m }}")),
        now=NOW,
    )
    assert variant.id != source.id
    assert variant.model_config["context_size"] == 8192
    assert variant.layers[0] == source.layers[0]
    assert store.blob_path(weights).stat().st_ino == inode  # not copied
    assert store.bundle(variant).chat_template_path is not None
    assert store.bundle(variant).chat_template_path.read_text() == "{{ m }}"
    assert store.bundle(variant).gguf_path.stat().st_ino == inode  # hard link, no copy
    again = store.resolve("ai/tiny:latest")
    assert again.id == source.id and again.model_config["context_size"] == 2048
    assert store.resolve("myorg/tiny:8k").id == variant.id
