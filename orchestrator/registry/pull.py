"""One entry point for ``POST /models/create``: pull from Hugging Face or an OCI registry."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import (
    DigestMismatchError,
    RegistryDeniedError,
    RegistryError,
    RemoteNotFoundError,
)
from orchestrator.registry.client import RegistryClient
from orchestrator.registry.huggingface import HuggingFaceClient
from orchestrator.registry.progress import ProgressCallback
from orchestrator.registry.request_auth import RequestAuth
from orchestrator.settings import mirror_host

if TYPE_CHECKING:
    from orchestrator.settings import Config
    from orchestrator.store.records import ModelRecord
    from orchestrator.store.reference import ModelRef
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)

# What a mirror may answer for the next source to be tried: it lacks the model, refuses us, is
# down or serves bad bytes. Store errors (a full disk) are not the mirror's fault and end the pull.
_MIRROR_MISSES = (RemoteNotFoundError, RegistryDeniedError, RegistryError, DigestMismatchError)


def pull_sources(ref: ModelRef, config: Config) -> list[ModelRef]:
    """Return where a pull of ``ref`` looks, in order: the mirrors, then ``ref`` itself.

    Mirrors serve the default registry only (Docker Hub, or ``DEFAULT_REGISTRY``), as DMR's
    serve Docker Hub only; a reference naming its registry goes there directly.
    """
    if ref.registry != config.default_registry or not config.registry_mirrors:
        return [ref]
    mirrors = [dataclasses.replace(ref, registry=mirror_host(m)) for m in config.registry_mirrors]
    return [*mirrors, ref]


def pull_model(
    ref: ModelRef,
    store: Store,
    *,
    config: Config,
    bearer_token: str | None,
    progress: ProgressCallback | None,
    docker_config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    request_auth: RequestAuth | None = None,
) -> ModelRecord:
    """Pull ``ref`` into ``store`` and tag it; emit progress lines through ``progress``.

    ``hf.co``/``huggingface.co`` references use the Hub's file API with ``bearer_token`` (the
    CLI forwards ``HF_TOKEN`` there), falling back to the daemon's own ``HF_TOKEN``; other
    references use the OCI client with Docker's stored credentials, or ``bearer_token`` as a
    static Bearer when given, or the request's own ``request_auth`` (``X-Registry-Auth``) for
    its registry. Registry mirrors are tried first (:func:`pull_sources`); the origin is the
    last resort and its error is the one reported. A model already in the store only gets
    (re)tagged and reports ``Using cached model: <size>``.

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
        insecure_registries=config.plain_http_registries,
        bearer_token=bearer_token,
        docker_config_dir=docker_config_dir,
        environ=environ,
        deadline_seconds=deadline,
        stall_seconds=stall,
        min_bytes_per_second=floor,
        request_auth=request_auth.bound_to(ref.registry) if request_auth else None,
    ) as client:
        *mirrors, origin = pull_sources(ref, config)
        for mirror in mirrors:
            try:
                return client.pull(ref, store, progress, source=mirror)
            except _MIRROR_MISSES as ex:
                # Layers already fetched stay in the store: the next source skips them.
                log.info(
                    "mirror miss, trying the next source mirror=%s ref=%s reason=%s",
                    mirror.registry,
                    ref,
                    ex.message,
                )
        return client.pull(ref, store, progress, source=origin)
