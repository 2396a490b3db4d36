"""Choosing Hugging Face files by tag (pure; DMR spec 3.5)."""

from __future__ import annotations

import pytest

from orchestrator.errors import RemoteNotFoundError, UnsupportedModelError
from orchestrator.registry.huggingface import HubFile, _repo_id, select_files
from orchestrator.store.reference import parse_reference


def files(*paths: str) -> list[HubFile]:
    return [HubFile(path, 10) for path in paths]


def chosen(listing: list[HubFile], tag: str) -> tuple[list[str], str | None]:
    ggufs, projector = select_files(listing, tag, "org/repo")
    return [f.path for f in ggufs], projector.path if projector else None


def test_quant_suffixes_dash_dot_and_shard() -> None:
    listing = files(
        "a-Q4_K_M.gguf",
        "a.Q8_0.gguf",
        "big/a-Q2_K-00001-of-00002.gguf",
        "big/a-Q2_K-00002-of-00002.gguf",
    )
    assert chosen(listing, "Q4_K_M") == (["a-Q4_K_M.gguf"], None)
    assert chosen(listing, "q8_0") == (["a.Q8_0.gguf"], None)
    assert chosen(listing, "Q2_K") == (
        ["big/a-Q2_K-00001-of-00002.gguf", "big/a-Q2_K-00002-of-00002.gguf"],
        None,
    )


def test_default_tags_prefer_q4_k_m_then_first_gguf() -> None:
    listing = files("m-F16.gguf", "m-Q4_K_M.gguf", "m-Q8_0.gguf")
    for tag in ("latest", "main", "", "LATEST"):
        assert chosen(listing, tag)[0] == ["m-Q4_K_M.gguf"]
    assert chosen(files("m-Q8_0.gguf", "m-F16.gguf"), "latest")[0] == ["m-F16.gguf"]


def test_default_tag_takes_all_shards_of_the_first_gguf() -> None:
    listing = files("m-00002-of-00002.gguf", "m-00001-of-00002.gguf")
    assert chosen(listing, "latest")[0] == ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]


def test_incomplete_shard_set_is_refused() -> None:
    with pytest.raises(RemoteNotFoundError, match="2 of the 3 shards"):
        chosen(files("m-Q8_0-00001-of-00003.gguf", "m-Q8_0-00002-of-00003.gguf"), "Q8_0")


def test_projector_chosen_separately_preferring_f16() -> None:
    listing = files("m-Q4_K_M.gguf", "mmproj-m-Q8_0.gguf", "mmproj-m-f16.gguf")
    assert chosen(listing, "latest") == (["m-Q4_K_M.gguf"], "mmproj-m-f16.gguf")
    assert chosen(files("m-Q4_K_M.gguf", "mmproj-b.gguf", "mmproj-a.gguf"), "Q4_K_M")[1] == (
        "mmproj-a.gguf"
    )


def test_missing_quant_names_the_available_tags() -> None:
    with pytest.raises(RemoteNotFoundError, match="Q4_K_M, Q8_0"):
        chosen(files("m-Q8_0.gguf", "m.Q4_K_M.gguf"), "Q5_K_S")


def test_no_gguf_is_unsupported() -> None:
    with pytest.raises(UnsupportedModelError):
        chosen(files("model.safetensors", "config.json"), "latest")


def test_repo_id_keeps_the_typed_case() -> None:
    assert _repo_id(parse_reference("hf.co/Org/My-Model:Q4_K_M")) == "Org/My-Model"
    assert _repo_id(parse_reference("huggingface.co/Org/My-Model")) == "Org/My-Model"
