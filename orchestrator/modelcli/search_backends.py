"""Fill in the BACKEND and SIZE columns of search results (best effort, as DMR does).

A Docker Hub result is looked up in its registry: the layer media types of ``ai/<name>:latest``
name the backend (GGUF: llama.cpp, safetensors: vllm, DDUF: diffusers) and the layer sizes add
up to the download. A Hugging Face result is looked up in the Hub's file list: file suffixes
name the backend; the size is what ``docker model pull hf.co/<repo>`` downloads (the default
quantisation and its projector), where DMR adds up every weight file of the repository.

A lookup that fails leaves ``unknown`` and size 0, never an error: the search answer is still
worth having. Lookups run a few at a time under one overall budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

from orchestrator.modelcli.search_sources import (
    BACKEND_UNKNOWN,
    DOCKER_HUB_SOURCE,
    HUGGING_FACE_SOURCE,
    SearchResult,
    hf_endpoint,
)
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.huggingface import HubFile, HuggingFaceClient, select_files
from orchestrator.store import mediatypes
from orchestrator.store.reference import DEFAULT_REGISTRY, parse_reference

REGISTRY_VARIABLE = "DOCKER_MODEL_HUB_REGISTRY"
LLAMA_CPP = "llama.cpp"
VLLM = "vllm"
DIFFUSERS = "diffusers"
_ORDER = (LLAMA_CPP, VLLM, DIFFUSERS)
RESOLVE_CONCURRENCY = 4
LOOKUP_TIMEOUT_SECONDS = 10.0
# Lookups not started by then are skipped; running ones end within their own deadline.
RESOLVE_BUDGET_SECONDS = 30.0

# One lookup: result -> (backend, size in bytes).
Lookup = Callable[[SearchResult], tuple[str, int]]


def join_backends(backends: Sequence[str]) -> str:
    """Return the distinct known backends in DMR's order, comma-joined, or ``unknown``."""
    seen = set(backends)
    known = [backend for backend in _ORDER if backend in seen]
    return ", ".join(known) if known else BACKEND_UNKNOWN


def backend_of_layers(layers: Sequence[Mapping[str, Any]]) -> str:
    """Return the backend the layer media types of a model artifact call for."""
    found = []
    for layer in layers:
        media_type = layer.get("mediaType")
        if media_type in mediatypes.GGUF_LAYERS:
            found.append(LLAMA_CPP)
        elif media_type == mediatypes.SAFETENSORS:
            found.append(VLLM)
        elif media_type == mediatypes.DDUF:
            found.append(DIFFUSERS)
    return join_backends(found)


def backend_of_files(paths: Sequence[str]) -> str:
    """Return the backend the file names of a Hugging Face repository call for."""
    found = []
    for path in paths:
        suffix = PurePosixPath(path).suffix.lower()
        if suffix == ".gguf":
            found.append(LLAMA_CPP)
        elif suffix == ".safetensors":
            found.append(VLLM)
        elif suffix == ".dduf":
            found.append(DIFFUSERS)
    return join_backends(found)


def hub_download_size(files: list[HubFile], repo: str) -> int:
    """Return the bytes a default pull of ``repo`` downloads (GGUF) or its weights (others)."""
    if any(file.name.lower().endswith(".gguf") for file in files):
        chosen, projector = select_files(files, "latest", repo)
        return sum(file.size for file in chosen) + (projector.size if projector else 0)
    weights = (".safetensors", ".dduf")
    return sum(file.size for file in files if file.name.lower().endswith(weights))


class BackendResolver:
    """Look search results up in their registry or on the Hub.

    Args:
        environ: The CLI's environment: ``DOCKER_MODEL_HUB_REGISTRY`` (the registry Docker Hub
            results are looked up in, default ``docker.io``), ``HF_ENDPOINT``, ``HF_TOKEN``,
            ``DOCKER_CONFIG``.
        timeout_seconds: Deadline of each lookup request.
        budget_seconds: No lookup starts after this.
        clock: Monotonic clock.
    """

    def __init__(
        self,
        environ: Mapping[str, str],
        *,
        timeout_seconds: float = LOOKUP_TIMEOUT_SECONDS,
        budget_seconds: float = RESOLVE_BUDGET_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = environ.get(REGISTRY_VARIABLE, "").strip() or DEFAULT_REGISTRY
        self.budget_seconds = budget_seconds
        self.clock = clock
        self._registry_client = RegistryClient(
            environ=environ,
            timeout_seconds=timeout_seconds,
            deadline_seconds=timeout_seconds,
            max_parallel=RESOLVE_CONCURRENCY,
        )
        self._hub_client = HuggingFaceClient(
            endpoint=hf_endpoint(environ),
            token=environ.get("HF_TOKEN", "").strip() or None,
            timeout_seconds=timeout_seconds,
            deadline_seconds=timeout_seconds,
            max_parallel=RESOLVE_CONCURRENCY,
        )

    def close(self) -> None:
        """Close both connection pools."""
        self._registry_client.close()
        self._hub_client.close()

    def lookup_registry(self, result: SearchResult) -> tuple[str, int]:
        """Return the backend and size of a Docker Hub repository's ``latest`` tag."""
        ref = parse_reference(f"{self.registry}/{result.name}:latest")
        _, manifest = self._registry_client.fetch_manifest(ref)
        layers = [layer for layer in manifest.get("layers") or [] if isinstance(layer, dict)]
        size = sum(
            layer["size"]
            for layer in layers
            if isinstance(layer.get("size"), int) and layer["size"] > 0
        )
        return backend_of_layers(layers), size

    def lookup_hub(self, result: SearchResult) -> tuple[str, int]:
        """Return the backend and default-pull size of a Hugging Face repository."""
        files = self._hub_client.list_files(result.name)
        return backend_of_files([file.path for file in files]), hub_download_size(
            files, result.name
        )

    def lookup(self, result: SearchResult) -> tuple[str, int]:
        """Return the backend and size of one result from the place it came from."""
        if result.source == DOCKER_HUB_SOURCE:
            return self.lookup_registry(result)
        if result.source == HUGGING_FACE_SOURCE:
            return self.lookup_hub(result)
        return BACKEND_UNKNOWN, 0

    def resolve(self, results: Sequence[SearchResult]) -> list[SearchResult]:
        """Return ``results`` with backend and size filled in where a lookup succeeded."""
        return resolve_all(
            results, self.lookup, budget_seconds=self.budget_seconds, clock=self.clock
        )


def resolve_all(
    results: Sequence[SearchResult],
    lookup: Lookup,
    *,
    budget_seconds: float = RESOLVE_BUDGET_SECONDS,
    concurrency: int = RESOLVE_CONCURRENCY,
    clock: Callable[[], float] = time.monotonic,
) -> list[SearchResult]:
    """Run ``lookup`` on every result, ``concurrency`` at a time, within ``budget_seconds``.

    A lookup that raises, or one not started before the budget ran out, keeps ``unknown``/0.
    """
    resolved = list(results)
    if not resolved:
        return resolved
    deadline = clock() + budget_seconds
    executor = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="resolve")
    pending: dict[Future[tuple[str, int]], int] = {
        executor.submit(_guarded, lookup, result): index for index, result in enumerate(resolved)
    }
    try:
        while pending:
            remaining = deadline - clock()
            if remaining <= 0:
                break
            done, _ = wait(pending, timeout=remaining, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                backend, size = future.result()
                if backend != BACKEND_UNKNOWN or size:
                    resolved[index] = replace(resolved[index], backend=backend, size=size)
    finally:
        # Lookups still queued are dropped; running ones are bounded by their own deadline.
        executor.shutdown(wait=False, cancel_futures=True)
    return resolved


def _guarded(lookup: Lookup, result: SearchResult) -> tuple[str, int]:
    try:
        return lookup(result)
    except Exception:  # noqa: BLE001
        # NOTE: a lookup is decoration: whatever a registry or the Hub answers (an error, a
        # manifest our parser refuses), the search still prints, with "unknown" (as DMR does).
        return BACKEND_UNKNOWN, 0
