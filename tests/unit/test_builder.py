"""Building DMR artifacts from GGUF files: manifest, config blob, determinism, validation."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from orchestrator.errors import DigestMismatchError, InvalidModelFileError, InvalidRequestError
from orchestrator.store import builder, mediatypes
from orchestrator.store.layout import go_json
from orchestrator.store.store import Store

# The fixture files are written with the gguf package (a test dependency; Debian 12 lacks it).
pytest.importorskip("gguf", reason="the gguf package (pip install gguf) writes the test models")
from tests.support import gguf_files

CREATED = datetime.datetime(2025, 3, 24, 12, 0, 0, 123456, tzinfo=datetime.UTC)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("package")
    gguf_files.write_llama_model(root / "tiny-llama.gguf")
    gguf_files.write_llama_model(root / "mmproj-tiny.gguf", n_layers=1)
    (root / "LICENSE").write_text("Apache License 2.0\n")
    (root / "NOTICE").write_text("notice & <thanks>\n")
    (root / "template.jinja").write_text("{{ messages }}\n")
    return root


def test_single_gguf_manifest_is_exactly_dmr_shaped(files: Path) -> None:
    model = files / "tiny-llama.gguf"
    artifact = builder.build_gguf_artifact(model, created=CREATED)
    data = model.read_bytes()
    digest = _sha(data)
    mode = os.stat(model).st_mode & 0o777
    metadata = (
        f'{{\\"name\\":\\"tiny-llama.gguf\\",\\"mode\\":{mode},\\"uid\\":0,\\"gid\\":0,'
        f'\\"size\\":{len(data)},\\"mtime\\":\\"2025-03-24T12:00:00.123456Z\\",\\"typeflag\\":0}}'
    )
    expected = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        '"config":{"mediaType":"application/vnd.docker.ai.model.config.v0.1+json",'
        f'"size":{len(artifact.config_bytes)},"digest":"{_sha(artifact.config_bytes)}"}},'
        f'"layers":[{{"mediaType":"application/vnd.docker.ai.gguf.v3","size":{len(data)},"digest":"{digest}",'
        '"annotations":{"org.cncf.model.file.mediatype.untested":"false",'
        f'"org.cncf.model.file.metadata+json":"{metadata}",'
        '"org.cncf.model.filepath":"tiny-llama.gguf"}}]}'
    )
    assert artifact.manifest_bytes.decode() == expected
    assert artifact.model_id == _sha(artifact.manifest_bytes)
    assert artifact.config_digest == _sha(artifact.config_bytes)
    assert artifact.manifest["layers"][0]["digest"] == digest
    (layer,) = artifact.layers
    assert (layer.path, layer.media_type, layer.digest, layer.size) == (
        model,
        mediatypes.GGUF,
        digest,
        len(data),
    )


def test_config_blob(files: Path) -> None:
    artifact = builder.build_gguf_artifact(files / "tiny-llama.gguf", created=CREATED)
    text = artifact.config_bytes.decode()
    assert text.startswith(
        '{"config":{"format":"gguf","quantization":"Q8_0","parameters":"76.10K",'
    )
    assert text.endswith(
        f',"context_size":4096}},"descriptor":{{"created":"2025-03-24T12:00:00.123456Z"}},'
        f'"rootfs":{{"type":"rootfs","diff_ids":["{artifact.layers[0].digest}"]}}}}'
    )
    config = artifact.config
    assert list(config) == ["config", "descriptor", "rootfs"]
    assert list(config["config"]) == [
        "format",
        "quantization",
        "parameters",
        "architecture",
        "size",
        "gguf",
        "context_size",
    ]
    assert config["config"]["architecture"] == "llama"
    assert config["config"]["gguf"]["general.name"] == "Tiny Llama Test"
    # The chat template's < and > are escaped the way Go's encoding/json does.
    assert "\\u003c|end|\\u003e" in text and "<" not in text and ">" not in text


def test_same_inputs_give_byte_identical_manifests(files: Path) -> None:
    kwargs = {
        "licenses": [files / "LICENSE"],
        "chat_template": files / "template.jinja",
        "created": CREATED,
    }
    first = builder.build_gguf_artifact(files / "tiny-llama.gguf", **kwargs)  # type: ignore[arg-type]
    os.utime(
        files / "LICENSE", (1_000_000, 1_000_000)
    )  # file times do not leak in when created is given
    second = builder.build_gguf_artifact(files / "tiny-llama.gguf", **kwargs)  # type: ignore[arg-type]
    assert first.manifest_bytes == second.manifest_bytes
    assert first.config_bytes == second.config_bytes
    later = builder.build_gguf_artifact(
        files / "tiny-llama.gguf", created=CREATED + datetime.timedelta(seconds=1)
    )
    assert later.model_id != first.model_id


def test_default_created_is_now_and_mtime_comes_from_the_file(files: Path) -> None:
    license_file = files / "LICENSE"
    os.utime(license_file, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    before = datetime.datetime.now(datetime.UTC)
    artifact = builder.build_gguf_artifact(files / "tiny-llama.gguf", licenses=[license_file])
    created = datetime.datetime.fromisoformat(
        artifact.config["descriptor"]["created"].replace("Z", "+00:00")
    )
    assert before - datetime.timedelta(seconds=1) <= created <= datetime.datetime.now(datetime.UTC)
    metadata = json.loads(artifact.layers[1].annotations[mediatypes.ANNOTATION_FILE_METADATA])
    assert metadata["mtime"] == "2023-11-14T22:13:20.123456789Z"


def test_extra_layers_follow_dmr_order(files: Path) -> None:
    artifact = builder.build_gguf_artifact(
        files / "tiny-llama.gguf",
        licenses=[files / "LICENSE", files / "NOTICE"],
        chat_template=files / "template.jinja",
        mmproj=files / "mmproj-tiny.gguf",
        created=CREATED,
    )
    kinds = [(layer.media_type, layer.path.name) for layer in artifact.layers]
    assert kinds == [
        (mediatypes.GGUF, "tiny-llama.gguf"),
        (mediatypes.LICENSE, "LICENSE"),
        (mediatypes.LICENSE, "NOTICE"),
        (mediatypes.CHAT_TEMPLATE, "template.jinja"),
        (mediatypes.MMPROJ, "mmproj-tiny.gguf"),
    ]
    assert artifact.config["rootfs"]["diff_ids"] == [layer.digest for layer in artifact.layers]
    assert [d["digest"] for d in artifact.manifest["layers"]] == [
        layer.digest for layer in artifact.layers
    ]
    assert all(layer.digest == _sha(layer.path.read_bytes()) for layer in artifact.layers)
    notice = artifact.layers[2].annotations
    assert notice[mediatypes.ANNOTATION_FILEPATH] == "NOTICE"
    assert json.loads(notice[mediatypes.ANNOTATION_FILE_METADATA])["size"] == len(
        "notice & <thanks>\n"
    )


def test_sharded_model_has_one_layer_per_shard(tmp_path: Path) -> None:
    shards = gguf_files.write_sharded_model(tmp_path, "x", shards=3)
    single = gguf_files.write_llama_model(tmp_path / "whole.gguf")
    artifact = builder.build_gguf_artifact(shards[0], created=CREATED)
    assert [layer.path for layer in artifact.layers] == shards
    assert all(layer.media_type == mediatypes.GGUF for layer in artifact.layers)
    names = [d["annotations"][mediatypes.ANNOTATION_FILEPATH] for d in artifact.manifest["layers"]]
    assert names == ["x-00001-of-00003.gguf", "x-00002-of-00003.gguf", "x-00003-of-00003.gguf"]
    config = artifact.config["config"]
    assert (
        config["parameters"] == builder.build_gguf_artifact(single).config["config"]["parameters"]
    )
    assert config["context_size"] == gguf_files.CONTEXT_LENGTH
    shards[2].unlink()
    with pytest.raises(InvalidModelFileError, match=r"x-00003-of-00003\.gguf"):
        builder.build_gguf_artifact(shards[0])


def test_context_size_overrides_the_gguf_value(files: Path) -> None:
    artifact = builder.build_gguf_artifact(
        files / "tiny-llama.gguf", context_size=512, created=CREATED
    )
    assert artifact.config["config"]["context_size"] == 512
    assert list(artifact.config["config"])[-1] == "context_size"


@pytest.mark.parametrize("bad", [0, -1, 2**31, True, "8192"])
def test_bad_context_size_is_an_invalid_request(files: Path, bad: object) -> None:
    with pytest.raises(InvalidRequestError, match="context size") as caught:
        builder.build_gguf_artifact(files / "tiny-llama.gguf", context_size=bad)  # type: ignore[arg-type]
    assert caught.value.param == "context_size" and caught.value.status == 400


def test_invalid_inputs_are_clear_errors(files: Path, tmp_path: Path) -> None:
    model = files / "tiny-llama.gguf"
    cases = [
        (
            lambda: builder.build_gguf_artifact(tmp_path / "missing.gguf"),
            "model file .*missing.gguf' does not exist",
        ),
        (lambda: builder.build_gguf_artifact(tmp_path), "is not a regular file"),
        (
            lambda: builder.build_gguf_artifact(gguf_files.write_not_gguf(tmp_path / "n.gguf")),
            "is not a GGUF file",
        ),
        (
            lambda: builder.build_gguf_artifact(
                gguf_files.write_truncated(tmp_path / "t.gguf", model, 5000)
            ),
            "t.gguf' is truncated",
        ),
        (
            lambda: builder.build_gguf_artifact(model, licenses=[tmp_path / "NOPE"]),
            "license file .*NOPE' does not exist",
        ),
        (
            lambda: builder.build_gguf_artifact(model, chat_template=tmp_path),
            "chat template file .* not a regular file",
        ),
        (
            lambda: builder.build_gguf_artifact(model, mmproj=files / "LICENSE"),
            "LICENSE' is not a GGUF file",
        ),
    ]
    for call, message in cases:
        with pytest.raises(InvalidModelFileError, match=message) as caught:
            call()
        assert caught.value.status == 400


def test_hashing_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as fileobj:
        fileobj.truncate(64 << 20)
    tracemalloc.start()
    try:
        digest, size = builder.hash_file(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == 64 << 20
    assert digest == "sha256:" + hashlib.sha256(bytes(64 << 20)).hexdigest()
    assert peak < 3 << 20


def test_go_json_escapes_like_go() -> None:
    # Model IDs depend on this serialisation (layout.go_json, shared with the store).
    value = {"b": 1, "a": ["<x>", "&", "\u2028\u2029", "é", "\n\t\b\f\x01\x7f", '"\\'], "c": None}
    assert go_json(value) == (
        b'{"b":1,"a":["\\u003cx\\u003e","\\u0026","\\u2028\\u2029","\xc3\xa9",'
        b'"\\n\\t\\b\\f\\u0001\x7f","\\"\\\\"],"c":null}'
    )


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (
            datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
            "2025-01-02T03:04:05Z",
        ),
        (datetime.datetime(2025, 1, 2, 3, 4, 5, 120000), "2025-01-02T03:04:05.12Z"),
        (
            datetime.datetime(
                2025, 1, 2, 3, 4, 5, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
            ),
            "2025-01-02T01:04:05.000001Z",
        ),
    ],
)
def test_rfc3339_nano(moment: datetime.datetime, text: str) -> None:
    assert builder.format_rfc3339_nano(moment) == text


def test_real_smollm2_artifact(smollm2_gguf: Path) -> None:
    artifact = builder.build_gguf_artifact(smollm2_gguf, created=CREATED)
    config = artifact.config["config"]
    assert (config["architecture"], config["quantization"], config["parameters"]) == (
        "llama",
        "Q4_1",
        "134.52M",
    )
    assert (config["size"], config["context_size"]) == ("92.10MiB", 8192)
    assert artifact.layers[0].size == 98_362_432
    assert (
        builder.build_gguf_artifact(smollm2_gguf, created=CREATED).manifest_bytes
        == artifact.manifest_bytes
    )


def test_store_artifact_puts_every_blob_in_the_store(files: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    artifact = builder.build_gguf_artifact(
        files / "tiny-llama.gguf", licenses=[files / "LICENSE"], created=CREATED
    )
    record = builder.store_artifact(store, artifact, ["ai/tiny:latest"])
    assert record.id == artifact.model_id
    assert record.tags == ("docker.io/ai/tiny:latest",)
    assert record.files == (*[layer.digest for layer in artifact.layers], artifact.config_digest)
    assert store.read_blob(artifact.config_digest) == artifact.config_bytes
    for layer in artifact.layers:
        assert store.blob_path(layer.digest).read_bytes() == layer.path.read_bytes()
    assert store.resolve("ai/tiny").manifest_bytes == artifact.manifest_bytes
    assert store.resolve("ai/tiny").model_config["context_size"] == gguf_files.CONTEXT_LENGTH
    again = builder.store_artifact(store, artifact, ["ai/tiny:v2"])  # idempotent, adds a tag
    assert again.id == record.id and set(again.tags) == {
        "docker.io/ai/tiny:latest",
        "docker.io/ai/tiny:v2",
    }
    assert len(store.list_models()) == 1


def test_store_artifact_refuses_a_file_changed_after_the_build(tmp_path: Path) -> None:
    model = gguf_files.write_llama_model(tmp_path / "changing.gguf")
    artifact = builder.build_gguf_artifact(model, created=CREATED)
    with open(model, "r+b") as fileobj:
        fileobj.seek(-1, os.SEEK_END)
        fileobj.write(b"\x01")
    store = Store(tmp_path / "store")
    with pytest.raises(DigestMismatchError):
        builder.store_artifact(store, artifact, ["ai/changing:latest"])
    assert store.list_models() == []
    assert not store.has_blob(artifact.layers[0].digest)
