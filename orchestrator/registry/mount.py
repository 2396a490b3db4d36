"""Where a push may mount a blob from instead of uploading it (cross-repository mount).

A registry keeps blobs per repository: pushing ``reg/team/variant`` after pulling
``reg/ai/smollm2`` finds none of the shared weights by ``HEAD`` in the new repository, although
the registry holds them. The OCI distribution spec lets the client ask to link a blob from
another repository (``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other>``); the
registry answers 201 when it did, or opens an ordinary upload (202) when it cannot.

The candidates are the repositories, in the push's registry, of local models that hold the
blob: a model pulled from (or pushed to) there most likely left its blobs there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from orchestrator.errors import InvalidReferenceError
from orchestrator.store.reference import ModelRef, parse_reference


class TaggedModel(Protocol):
    """What :func:`mount_sources` reads from a ``ModelRecord``."""

    @property
    def tags(self) -> tuple[str, ...]:
        """Return the tag identities (``reg/ns/name:tag``)."""

    @property
    def files(self) -> tuple[str, ...]:
        """Return the layer digests, then the config digest."""


def mount_sources(models: Iterable[TaggedModel], target: ModelRef) -> dict[str, str]:
    """Return ``{blob digest: repository}`` to mount from when pushing to ``target``.

    Only repositories of ``target``'s registry other than ``target``'s own count (its own is
    what ``HEAD`` already asks). The first local model naming a blob wins.
    """
    sources: dict[str, str] = {}
    for model in models:
        repositories = []
        for tag in model.tags:
            try:
                ref = parse_reference(tag)
            except InvalidReferenceError:
                continue
            if ref.registry == target.registry and ref.repository != target.repository:
                repositories.append(ref.repository)
        if not repositories:
            continue
        for digest in model.files:
            sources.setdefault(digest, repositories[0])
    return sources
