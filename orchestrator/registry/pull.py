"""One entry point for ``POST /models/create``: pull from Hugging Face or an OCI registry."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.registry.client import RegistryClient
from orchestrator.registry.huggingface import HuggingFaceClient
from orchestrator.registry.progress import ProgressCallback

if TYPE_CHECKING:
    from orchestrator.settings import Config
    from orchestrator.store.records import ModelRecord
    from orchestrator.store.reference import ModelRef
    from orchestrator.store.store import Store


def pull_model(
    ref: ModelRef,
    store: Store,
    *,
    config: Config,
    bearer_token: str | None,
    progress: ProgressCallback | None,
    docker_config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ModelRecord:
    """Pull ``ref`` into ``store`` and tag it; emit progress lines through ``progress``.

    ``hf.co``/``huggingface.co`` references use the Hub's file API with ``bearer_token`` (the
    CLI forwards ``HF_TOKEN`` there), falling back to the daemon's own ``HF_TOKEN``; other
    references use the OCI client with Docker's stored credentials, or ``bearer_token`` as a
    static Bearer when given. A model already in the store only gets (re)tagged and reports
    ``Using cached model: <size>``.

    Raises:
        OrchestratorError: ``RemoteNotFoundError``, ``RegistryDeniedError``,
            ``UnsupportedModelError``, ``DigestMismatchError``, ``RegistryError`` and the
            store's errors.
    """
    env = os.environ if environ is None else environ
    deadline = config.registry_deadline_seconds
    stall = config.registry_stall_seconds
    floor = config.registry_min_bytes_per_second
    if ref.is_huggingface:
        token = bearer_token or env.get("HF_TOKEN") or None
        with HuggingFaceClient(
            endpoint=config.hf_endpoint,
            token=token,
            deadline_seconds=deadline,
            stall_seconds=stall,
            min_bytes_per_second=floor,
        ) as hub:
            return hub.pull(ref, store, progress)
    with RegistryClient(
        insecure_registries=config.insecure_registries,
        bearer_token=bearer_token,
        docker_config_dir=docker_config_dir,
        environ=environ,
        deadline_seconds=deadline,
        stall_seconds=stall,
        min_bytes_per_second=floor,
    ) as client:
        return client.pull(ref, store, progress)
