"""The ``models.json`` index: entries, tag identity and tag moves (DMR spec sections 2.2-2.3).

``models.json`` is ``{"models": [{"id", "tags", "files"}]}``, 2-space indented as Go's
``json.MarshalIndent`` writes it (an entry without tags has ``"tags": null``, as in DMR).
Tags are stored fully qualified (``docker.io/ai/smollm2:latest``); older stores hold the
short form (``ai/smollm2:latest``), so tags are always compared by their normalised identity.

The functions here change entries in memory only; ``Store`` reads the file, changes the
entries and writes it back while holding the store lock.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from orchestrator.errors import InvalidReferenceError, ModelNotFoundError, StoreError
from orchestrator.store.layout import go_json, write_file_atomic
from orchestrator.store.reference import (
    HUGGINGFACE_REGISTRY,
    default_registry,
    parse_model_id,
    parse_reference,
)

log = logging.getLogger(__name__)

_LEGACY_HF_PREFIX = "hf.co/"


@dataclasses.dataclass
class IndexEntry:
    """One model in ``models.json``.

    Attributes:
        id: ``sha256:<hex>`` of the raw manifest.
        tags: Tags as stored (normally fully qualified).
        files: Layer digests, then the config digest.
    """

    id: str
    tags: list[str]
    files: list[str]

    def to_json(self) -> dict[str, object]:
        """Return the entry as DMR writes it (``tags`` is ``null`` when empty)."""
        return {"id": self.id, "tags": list(self.tags) or None, "files": list(self.files)}


@dataclasses.dataclass(frozen=True)
class Lookup:
    """A parsed reference: what to match in the index, and how to name it in errors.

    Attributes:
        text: The reference as typed, trimmed.
        model_id: Full ID (or the digest of ``name@sha256:...``) to match exactly.
        short_id: 12 hex digits (may also be a one-component name, tried as a tag next).
        tag: Tag identity to match, e.g. ``docker.io/ai/x:latest``.
        shown: How error messages name the reference.
    """

    text: str
    model_id: str | None = None
    short_id: str | None = None
    tag: str | None = None
    shown: str = ""


def parse_lookup(ref: str) -> Lookup:
    """Parse ``ref`` without touching the file system.

    Raises:
        InvalidReferenceError: ``ref`` is not an ID, digest reference or tag.
    """
    text = ref.strip() if isinstance(ref, str) else ""
    return _parse_lookup(text, default_registry())


@functools.lru_cache(maxsize=1024)
def _parse_lookup(text: str, registry: str) -> Lookup:
    # Every inference request names its model: parsed once per text (errors are not cached).
    model_id = parse_model_id(text)
    if model_id is not None and model_id.startswith("sha256:"):
        return Lookup(text=text, model_id=model_id, shown=model_id)
    parsed = parse_reference(text, default_registry=registry)
    shown_name = parsed.name.removeprefix("docker.io/")
    if model_id is not None:
        return Lookup(text=text, short_id=model_id, tag=parsed.tag_string, shown=text)
    if parsed.digest is not None:
        return Lookup(text=text, model_id=parsed.digest, shown=f"{shown_name}@{parsed.digest}")
    return Lookup(text=text, tag=parsed.tag_string, shown=f"{shown_name}:{parsed.tag}")


def match(entries: list[IndexEntry], lookup: Lookup) -> tuple[IndexEntry | None, bool]:
    """Return the entry ``lookup`` names and whether it matched by tag."""
    if lookup.model_id is not None:
        return find_by_id(entries, lookup.model_id), False
    if lookup.short_id is not None:
        entry = find_by_short_id(entries, lookup.short_id)
        if entry is not None:
            return entry, False
    if lookup.tag is not None:
        entry = find_by_tag(entries, lookup.tag)
        return entry, entry is not None
    return None, False


def not_found_error(lookup: Lookup) -> ModelNotFoundError:
    """Return the error for a reference that names no local model."""
    if lookup.short_id is not None or (lookup.tag is None and "@" not in lookup.shown):
        hint = "list local models with 'docker model ls'"
    else:
        hint = f"pull it first (docker model pull {lookup.shown.removesuffix(':latest')})"
    return ModelNotFoundError(
        f"model '{lookup.shown}' is not in the local store; {hint}", param="model"
    )


def tag_identity(tag: str) -> str | None:
    """Return the normalised identity of a stored or requested tag, or ``None`` if unparsable."""
    return _tag_identity(tag, default_registry())


@functools.lru_cache(maxsize=4096)
def _tag_identity(tag: str, registry: str) -> str | None:
    # PERF: every lookup by tag compares against every stored tag; parsing each of them on
    # every request cost a millisecond per request with 200 models (issue 18). A tag's identity
    # depends only on its text and the default registry, hence the key.
    try:
        ref = parse_reference(tag, default_registry=registry)
    except InvalidReferenceError:
        return None
    return ref.tag_string


def target_identity(target: str) -> str:
    """Return the tag identity of a tag target (a digest suffix is dropped, as DMR does).

    Raises:
        InvalidReferenceError: ``target`` is a full model ID or not a valid reference.
    """
    text = target.strip() if isinstance(target, str) else ""
    model_id = parse_model_id(text)
    if model_id is not None and len(model_id) != 12:
        raise InvalidReferenceError(
            f"tag {text!r} is a model ID, not a name; use a name such as 'ai/smollm2:latest'",
            param="tag",
        )
    return parse_reference(text).tag_string


def read_index(path: Path) -> list[IndexEntry]:
    """Read ``models.json``; a missing file is an empty index.

    Raises:
        StoreError: The file is unreadable or not a DMR index.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as ex:
        raise StoreError(
            f"cannot read the model index '{path}': {ex.strerror}; check its permissions"
        ) from ex
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as ex:
        raise StoreError(
            f"the model index '{path}' is not valid JSON; restore it or purge the store"
        ) from ex
    models = document.get("models") if isinstance(document, dict) else None
    if models is None and isinstance(document, dict):
        return []
    if not isinstance(models, list):
        raise StoreError(
            f"the model index '{path}' has no 'models' list; restore it or purge the store"
        )
    entries: list[IndexEntry] = []
    for item in models:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            log.warning("skipping malformed index entry path=%s entry=%r", path, item)
            continue
        tags = [tag for tag in item.get("tags") or [] if isinstance(tag, str)]
        files = [digest for digest in item.get("files") or [] if isinstance(digest, str)]
        entries.append(IndexEntry(id=item["id"], tags=tags, files=files))
    return entries


def write_index(path: Path, entries: Iterable[IndexEntry]) -> None:
    """Write ``models.json`` atomically in DMR's format."""
    document = {"models": [entry.to_json() for entry in entries]}
    write_file_atomic(path, go_json(document, indent=True))


def find_by_id(entries: Iterable[IndexEntry], model_id: str) -> IndexEntry | None:
    """Return the entry whose ID is ``model_id``."""
    for entry in entries:
        if entry.id == model_id:
            return entry
    return None


def find_by_short_id(entries: Iterable[IndexEntry], short_id: str) -> IndexEntry | None:
    """Return the first entry whose ID's hex starts with the 12-hex ``short_id``."""
    for entry in entries:
        if entry.id.startswith("sha256:") and entry.id[7:19] == short_id:
            return entry
    return None


def find_by_tag(entries: Iterable[IndexEntry], identity: str) -> IndexEntry | None:
    """Return the entry holding the tag whose normalised identity is ``identity``."""
    for entry in entries:
        if has_tag(entry, identity):
            return entry
    return None


def find_by_name_component(entries: Iterable[IndexEntry], name: str) -> IndexEntry | None:
    """Return the first entry with a tag whose last path component (before ':') is ``name``.

    This is DMR's "partial name" fallback: ``smollm2`` finds ``myorg/smollm2:v1``.
    """
    for entry in entries:
        for tag in entry.tags:
            without_tag = tag.rsplit(":", 1)[0] if ":" in tag.rsplit("/", 1)[-1] else tag
            if without_tag.rsplit("/", 1)[-1] == name:
                return entry
    return None


def has_tag(entry: IndexEntry, identity: str) -> bool:
    """Return whether ``entry`` holds a tag whose normalised identity is ``identity``."""
    return any(tag_identity(tag) == identity for tag in entry.tags)


def add_tag(entries: list[IndexEntry], model_id: str, identity: str) -> bool:
    """Give ``identity`` to ``model_id``, taking it from any other model (a tag is unique).

    Returns:
        Whether anything changed (re-tagging with the same tag is a no-op).
    """
    changed = False
    for entry in entries:
        if entry.id == model_id:
            if not has_tag(entry, identity):
                entry.tags.append(identity)
                changed = True
        elif has_tag(entry, identity):
            entry.tags = [tag for tag in entry.tags if tag_identity(tag) != identity]
            changed = True
    return changed


def remove_tag(entries: list[IndexEntry], identity: str) -> list[str]:
    """Remove ``identity`` from every entry; return the stored spellings removed."""
    removed: list[str] = []
    for entry in entries:
        kept = []
        for tag in entry.tags:
            if tag_identity(tag) == identity:
                removed.append(tag)
            else:
                kept.append(tag)
        entry.tags = kept
    return removed


def migrate_legacy_tags(entries: list[IndexEntry]) -> int:
    """Rewrite ``hf.co/...`` tags to ``huggingface.co/...``; return how many changed."""
    migrated = 0
    for entry in entries:
        rewritten: list[str] = []
        for tag in entry.tags:
            if tag.startswith(_LEGACY_HF_PREFIX):
                tag = HUGGINGFACE_REGISTRY + "/" + tag[len(_LEGACY_HF_PREFIX) :]
                migrated += 1
            if tag not in rewritten:
                rewritten.append(tag)
        entry.tags = rewritten
    return migrated


def referenced_blobs(entries: Iterable[IndexEntry], *, excluding: str) -> set[str]:
    """Return every file digest referenced by entries other than ``excluding``."""
    return {digest for entry in entries if entry.id != excluding for digest in entry.files}
