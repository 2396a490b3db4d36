"""Native Hugging Face pulls against a loopback stand-in of the Hub's file API."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import (
    DigestMismatchError,
    RegistryDeniedError,
    RemoteNotFoundError,
    UnsupportedModelError,
)
from orchestrator.registry.huggingface import HuggingFaceClient, staging_dir
from orchestrator.registry.pull import pull_model
from orchestrator.settings import Config
from orchestrator.store import mediatypes
from orchestrator.store.reference import parse_reference
from orchestrator.store.store import Store
from tests.support.gguf_files import write_llama_model, write_sharded_model
from tests.support.hf_server import HubServer

TOKEN = "hf_test_token"


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write three small GGUF repositories in the Hub's layout."""
    root = tmp_path_factory.mktemp("hub")
    tiny = root / "TestOrg" / "Tiny-GGUF"
    tiny.mkdir(parents=True)
    write_llama_model(tiny / "Tiny-Q4_K_M.gguf", file_type=15)
    write_llama_model(tiny / "Tiny-Q8_0.gguf", file_type=7)
    write_llama_model(tiny / "mmproj-Tiny-F16.gguf", n_layers=1)
    write_llama_model(tiny / "mmproj-Tiny-Q8_0.gguf", n_layers=1, file_type=7)
    (tiny / "README.md").write_text("# Tiny\n")
    sharded = root / "TestOrg" / "Sharded-GGUF" / "Q8_0"
    sharded.mkdir(parents=True)
    write_sharded_model(sharded, "Sharded-Q8_0", shards=3)
    other = root / "TestOrg" / "NoDefault"
    other.mkdir(parents=True)
    write_llama_model(other / "model.Q8_0.gguf")
    write_llama_model(other / "model.F16.gguf", file_type=1)
    text = root / "TestOrg" / "Safetensors"
    text.mkdir(parents=True)
    (text / "model.safetensors").write_bytes(b"\0" * 16)
    return root


@pytest.fixture
def hub(hub_root: Path) -> Iterator[HubServer]:
    with HubServer(hub_root) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_pull_by_quant_tag_with_projector(hub: HubServer, hub_root: Path, store: Store) -> None:
    """A quant tag picks that GGUF, the F16 projector rides along, both verified by sha256."""
    events: list[dict[str, object]] = []
    ref = parse_reference("hf.co/TestOrg/Tiny-GGUF:Q8_0")
    with HuggingFaceClient(endpoint=hub.url) as client:
        record = client.pull(ref, store, events.append)
    repo = hub_root / "TestOrg" / "Tiny-GGUF"
    assert record.tags == ("huggingface.co/testorg/tiny-gguf:Q8_0",)
    assert [layer["digest"] for layer in record.gguf_layers] == [sha256(repo / "Tiny-Q8_0.gguf")]
    projectors = [x for x in record.layers if x["mediaType"] == mediatypes.MMPROJ]
    assert [x["digest"] for x in projectors] == [sha256(repo / "mmproj-Tiny-F16.gguf")]
    assert events[-1]["message"] == "Model pulled successfully"
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[-1]["total"] == record.size_bytes
    # The Hub API is called with the repository's own case; the staging folder is gone.
    assert any(s.path.startswith("/api/models/TestOrg/Tiny-GGUF/tree/main") for s in hub.seen)
    assert not staging_dir(store.root, hub.url, "TestOrg/Tiny-GGUF").exists()
    assert store.bundle(record).gguf_path.read_bytes() == (repo / "Tiny-Q8_0.gguf").read_bytes()


def test_default_tag_prefers_q4_k_m(hub: HubServer, hub_root: Path, store: Store) -> None:
    """latest means Q4_K_M when the repository has it."""
    with HuggingFaceClient(endpoint=hub.url) as client:
        record = client.pull(parse_reference("hf.co/TestOrg/Tiny-GGUF"), store)
    expected = sha256(hub_root / "TestOrg" / "Tiny-GGUF" / "Tiny-Q4_K_M.gguf")
    assert record.gguf_layers[0]["digest"] == expected
    assert record.tags == ("huggingface.co/testorg/tiny-gguf:latest",)


def test_default_tag_without_q4_k_m_takes_the_first_gguf(
    hub: HubServer, hub_root: Path, store: Store
) -> None:
    """Without a Q4_K_M file, latest takes the first GGUF by path."""
    with HuggingFaceClient(endpoint=hub.url) as client:
        record = client.pull(parse_reference("hf.co/TestOrg/NoDefault:latest"), store)
    assert record.gguf_layers[0]["digest"] == sha256(hub_root / "TestOrg/NoDefault/model.F16.gguf")


def test_quant_match_is_case_insensitive_and_dot_separated(
    hub: HubServer, hub_root: Path, store: Store
) -> None:
    """A lowercase tag matches the '.Q8_0' suffix."""
    with HuggingFaceClient(endpoint=hub.url) as client:
        record = client.pull(parse_reference("hf.co/TestOrg/NoDefault:q8_0"), store)
    assert record.gguf_layers[0]["digest"] == sha256(hub_root / "TestOrg/NoDefault/model.Q8_0.gguf")


def test_sharded_set_in_a_folder_without_recursive_listing(hub_root: Path, store: Store) -> None:
    """All shards of the chosen quant are pulled in order, even from a non-recursive listing."""
    with HubServer(hub_root, honour_recursive=False) as hub:
        with HuggingFaceClient(endpoint=hub.url) as client:
            record = client.pull(parse_reference("hf.co/TestOrg/Sharded-GGUF:Q8_0"), store)
        assert any(
            s.path.startswith("/api/models/TestOrg/Sharded-GGUF/tree/main/Q8_0") for s in hub.seen
        )
    folder = hub_root / "TestOrg" / "Sharded-GGUF" / "Q8_0"
    expected = [sha256(folder / f"Sharded-Q8_0-0000{i}-of-00003.gguf") for i in (1, 2, 3)]
    assert [layer["digest"] for layer in record.gguf_layers] == expected
    assert store.bundle(record).gguf_path.name == "model-00001-of-00003.gguf"


def test_unknown_quant_lists_the_available_tags(hub: HubServer, store: Store) -> None:
    """A tag no file matches is a 404 that names the tags that exist."""
    with (
        HuggingFaceClient(endpoint=hub.url) as client,
        pytest.raises(RemoteNotFoundError) as caught,
    ):
        client.pull(parse_reference("hf.co/TestOrg/Tiny-GGUF:Q2_K"), store)
    assert "Q4_K_M" in caught.value.message and "Q8_0" in caught.value.message
    assert store.list_models() == []


def test_missing_repository_and_non_gguf_repository(hub: HubServer, store: Store) -> None:
    """A missing repository is RemoteNotFoundError; one without GGUF is UnsupportedModelError."""
    with HuggingFaceClient(endpoint=hub.url) as client:
        with pytest.raises(RemoteNotFoundError):
            client.pull(parse_reference("hf.co/TestOrg/Nothing"), store)
        with pytest.raises(UnsupportedModelError):
            client.pull(parse_reference("hf.co/TestOrg/Safetensors"), store)


def test_token_required_works_with_token_and_is_denied_without(
    hub_root: Path, store: Store
) -> None:
    """A gated repository needs HF_TOKEN; the token never travels to the CDN origin."""
    ref = parse_reference("hf.co/TestOrg/Tiny-GGUF:Q8_0")
    with HubServer(hub_root, token=TOKEN, redirect=True) as hub:
        with (
            HuggingFaceClient(endpoint=hub.url) as client,
            pytest.raises(RegistryDeniedError) as caught,
        ):
            client.pull(ref, store)
        assert caught.value.status == 401
        assert "HF_TOKEN" in caught.value.message
        with HuggingFaceClient(endpoint=hub.url, token=TOKEN) as client:
            record = client.pull(ref, store)
        cdn = [s for s in hub.seen if s.path.startswith("/cdn/")]
    assert record.tags == ("huggingface.co/testorg/tiny-gguf:Q8_0",)
    assert cdn and all(s.authorization is None for s in cdn)


def test_pull_model_uses_config_endpoint_and_bearer_token(hub_root: Path, store: Store) -> None:
    """pull_model sends the request's bearer token to Config.hf_endpoint, then serves from cache."""
    ref = parse_reference("hf.co/TestOrg/Tiny-GGUF:Q8_0")
    events: list[dict[str, object]] = []
    with HubServer(hub_root, token=TOKEN) as hub:
        config = Config(hf_endpoint=hub.url)
        first = pull_model(ref, store, config=config, bearer_token=TOKEN, progress=None, environ={})
        seen = len(hub.seen)
        again = pull_model(
            ref, store, config=config, bearer_token=None, progress=events.append, environ={}
        )
        assert len(hub.seen) == seen  # cache checked by tag before any network
    assert again.id == first.id
    assert events == [
        {
            "type": "success",
            "message": f"Using cached model: {first.model_config['size']}",
            "total": 0,
            "layer": {"size": 0, "current": 0},
            "mode": "pull",
        }
    ]


def test_corrupt_download_is_refused(hub_root: Path, store: Store) -> None:
    """A file that does not match the listing's LFS sha256 stores nothing."""
    with HubServer(hub_root, corrupt={"Tiny-Q8_0.gguf"}) as hub:
        with HuggingFaceClient(endpoint=hub.url) as client, pytest.raises(DigestMismatchError):
            client.pull(parse_reference("hf.co/TestOrg/Tiny-GGUF:Q8_0"), store)
        staging = staging_dir(store.root, hub.url, "TestOrg/Tiny-GGUF")
    assert store.list_models() == []
    assert not (staging / "Tiny-Q8_0.gguf").exists()
    assert not (staging / "Tiny-Q8_0.gguf.incomplete").exists()
    assert not any((store.root / "blobs" / "sha256").iterdir())


def test_interrupted_download_resumes_with_range(hub_root: Path, store: Store) -> None:
    """A partial file in the staging folder is continued with Range and verified."""
    source = hub_root / "TestOrg" / "Tiny-GGUF" / "Tiny-Q8_0.gguf"
    keep = source.stat().st_size // 3
    with HubServer(hub_root, redirect=True) as hub:
        staging = staging_dir(store.root, hub.url, "TestOrg/Tiny-GGUF")
        staging.mkdir(parents=True)
        (staging / "Tiny-Q8_0.gguf.incomplete").write_bytes(source.read_bytes()[:keep])
        with HuggingFaceClient(endpoint=hub.url) as client:
            record = client.pull(parse_reference("hf.co/TestOrg/Tiny-GGUF:Q8_0"), store)
        ranged = [s for s in hub.seen if s.range is not None]
    assert record.gguf_layers[0]["digest"] == sha256(source)
    # The Range header survives the redirect to the CDN origin.
    assert [(s.path.split("/")[1], s.range, s.status) for s in ranged] == [
        ("TestOrg", f"bytes={keep}-", 302),
        ("cdn", f"bytes={keep}-", 206),
    ]
