"""The pure parts of ``docker model search``: formatting, merging, backend rules."""

from __future__ import annotations

import threading

import pytest

from orchestrator.errors import RegistryError
from orchestrator.modelcli.commands.search import gather, parse_source
from orchestrator.modelcli.search_backends import (
    backend_of_files,
    backend_of_layers,
    hub_download_size,
    join_backends,
    resolve_all,
)
from orchestrator.modelcli.search_format import (
    format_count,
    format_size,
    no_results_text,
    search_table,
)
from orchestrator.modelcli.search_sources import (
    DOCKER_HUB_SOURCE,
    HUGGING_FACE_SOURCE,
    DockerHubSource,
    SearchResult,
    describe_tags,
    truncate,
)
from orchestrator.registry.huggingface import HubFile
from orchestrator.store import mediatypes


def result(name: str, source: str, downloads: int = 0) -> SearchResult:
    return SearchResult(name, "d", downloads, 0, source, source == DOCKER_HUB_SOURCE, "")


class FakeSource:
    """A catalogue with canned answers (the merge logic is what is under test)."""

    def __init__(self, name: str, results: list[SearchResult] | None, error: str = "") -> None:
        self.name = name
        self.results = results
        self.error = error
        self.closed = False

    def search(self, query: str, limit: int) -> list[SearchResult]:
        if self.results is None:
            raise RegistryError(self.error)
        return self.results[:limit]

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0"), (999, "999"), (1_000, "1.0K"), (45_600, "45.6K"), (1_200_000, "1.2M")],
)
def test_format_count_matches_dmr(count: int, text: str) -> None:
    assert format_count(count) == text


def test_sizes_and_truncation() -> None:
    assert format_size(0) == "n/a"
    assert format_size(270_600_000) == "270.60MB"
    assert truncate("x" * 50) == "x" * 50
    assert truncate("x" * 51) == "x" * 47 + "..."
    assert truncate("abcdef", 3) == "abc"


def test_describe_tags_keeps_task_and_family_tags() -> None:
    tags = ["gguf", "Llama", "license:apache-2.0", "chat-format", "qwen2", "phi"]
    assert describe_tags(tags, "text-generation") == "text-generation, llama, chat-format"
    assert describe_tags(["gguf"], "") == "AI model"


def test_source_aliases() -> None:
    assert [parse_source(s) for s in ("", "all", "docker", "hub", "hf")] == [
        "all",
        "all",
        "dockerhub",
        "dockerhub",
        "huggingface",
    ]
    with pytest.raises(ValueError, match="valid options"):
        parse_source("github")


def test_gather_orders_docker_hub_first_then_by_downloads_and_cuts() -> None:
    hub = FakeSource(DOCKER_HUB_SOURCE, [result("ai/a", DOCKER_HUB_SOURCE, 5)])
    hf = FakeSource(
        HUGGING_FACE_SOURCE,
        [result("o/x", HUGGING_FACE_SOURCE, 10), result("o/y", HUGGING_FACE_SOURCE, 99)],
    )
    warnings: list[str] = []
    merged = gather([hf, hub], "", 2, warnings.append)
    assert [r.name for r in merged] == ["ai/a", "o/y"]
    assert warnings == []


def test_gather_warns_about_a_failed_source_when_another_answered() -> None:
    hub = FakeSource(DOCKER_HUB_SOURCE, None, "could not reach Docker Hub")
    hf = FakeSource(HUGGING_FACE_SOURCE, [result("o/x", HUGGING_FACE_SOURCE)])
    warnings: list[str] = []
    assert [r.name for r in gather([hub, hf], "", 32, warnings.append)] == ["o/x"]
    assert warnings == ["Warning: failed to search Docker Hub: could not reach Docker Hub"]


def test_gather_fails_when_nothing_is_left() -> None:
    hub = FakeSource(DOCKER_HUB_SOURCE, None, "hub down")
    hf = FakeSource(HUGGING_FACE_SOURCE, [])
    with pytest.raises(RegistryError, match="hub down"):
        gather([hub, hf], "", 32, lambda text: None)
    both = [hub, FakeSource(HUGGING_FACE_SOURCE, None, "hf down")]
    with pytest.raises(RegistryError, match="search failed: Docker Hub: hub down; HuggingFace"):
        gather(both, "", 32, lambda text: None)


def test_backend_rules() -> None:
    assert join_backends(["vllm", "llama.cpp", "vllm", "unknown"]) == "llama.cpp, vllm"
    assert join_backends([]) == "unknown"
    layers = [{"mediaType": mediatypes.CNCF_WEIGHT_GGUF}, {"mediaType": mediatypes.LICENSE}]
    assert backend_of_layers(layers) == "llama.cpp"
    assert backend_of_layers([{"mediaType": mediatypes.DDUF}]) == "diffusers"
    assert backend_of_files(["a/model.safetensors", "README.md"]) == "vllm"
    assert backend_of_files(["x.GGUF", "y.safetensors"]) == "llama.cpp, vllm"


def test_hub_size_is_the_default_pull() -> None:
    files = [
        HubFile("m-Q8_0.gguf", 800, None),
        HubFile("m-Q4_K_M.gguf", 500, None),
        HubFile("mmproj-m-f16.gguf", 70, None),
        HubFile("README.md", 3, None),
    ]
    assert hub_download_size(files, "o/m") == 570
    assert hub_download_size([HubFile("w.safetensors", 9, None)], "o/m") == 9


def test_resolve_all_fills_in_and_survives_failures() -> None:
    results = [result("ai/a", DOCKER_HUB_SOURCE), result("ai/b", DOCKER_HUB_SOURCE)]

    def lookup(r: SearchResult) -> tuple[str, int]:
        if r.name == "ai/b":
            raise KeyError("a registry answer our parser did not expect")
        return "llama.cpp", 42

    resolved = resolve_all(results, lookup)
    assert [(r.backend, r.size) for r in resolved] == [("llama.cpp", 42), ("unknown", 0)]


def test_resolve_all_stops_starting_lookups_after_its_budget() -> None:
    release = threading.Event()
    started: list[str] = []

    def slow(r: SearchResult) -> tuple[str, int]:
        started.append(r.name)
        release.wait(2)
        return "llama.cpp", 1

    results = [result(f"ai/m{i}", DOCKER_HUB_SOURCE) for i in range(6)]
    resolved = resolve_all(results, slow, budget_seconds=0.2, concurrency=2)
    release.set()
    assert [r.backend for r in resolved] == ["unknown"] * 6
    assert len(started) == 2


def test_next_page_is_moved_onto_the_configured_base() -> None:
    source = DockerHubSource("http://127.0.0.1:9/prefix")
    moved = source.next_page_url("https://hub.docker.com/prefix/v2/repositories/ai/?page=2")
    assert moved == "http://127.0.0.1:9/prefix/v2/repositories/ai/?page=2"
    source.close()


def test_table_and_empty_text() -> None:
    table = search_table([result("o/x", HUGGING_FACE_SOURCE, 1500)])
    assert table.splitlines()[1].split() == ["hf.co/o/x", "d", "unknown", "n/a", "1.5K", "0", "HuggingFace"]
    assert no_results_text("") == "No models found"
    assert no_results_text('a"b') == 'No models found matching "a\\"b"'
