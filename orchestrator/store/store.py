"""The local content-addressed model store (DMR spec sections 2.2 and 2.3).

``Store`` owns one store directory. Blobs and manifests are content-addressed and written
atomically, so they need no lock; every read-modify-write of ``models.json`` (add, tag,
delete, migrate, purge) happens under an exclusive ``flock`` on ``<root>/.lock`` and re-reads
the index under it, so several processes may share one store.

Lookups parse the reference before touching the file system: ``InvalidReferenceError``
for bad text, ``ModelNotFoundError`` for a valid reference that is not here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

from orchestrator.errors import (
    ConflictError,
    DigestMismatchError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    StoreError,
    UnsupportedModelError,
)
from orchestrator.store import bundles, index
from orchestrator.store.index import IndexEntry
from orchestrator.store.layout import (
    LAYOUT_VERSION,
    TEMP_MARK,
    StoreLayout,
    StoreLock,
    copy_into_temp,
    ensure_dir,
    fsync_file,
    go_json,
    hash_file,
    parse_digest,
    publish,
    remove_stale_files,
    write_file_atomic,
)
from orchestrator.store.records import Bundle, ModelRecord, parse_manifest

log = logging.getLogger(__name__)

# Entries a store directory may hold; anything else makes it "foreign" (see _is_foreign).
_STORE_ENTRIES = frozenset({"layout.json", "models.json", "blobs", "manifests", "bundles", ".lock"})


class _Parsed(NamedTuple):
    """A model's manifest and config as parsed, and the two files whose presence is checked."""

    raw: bytes
    manifest: dict[str, Any]
    config: dict[str, Any]
    manifest_file: str
    config_file: str


class Store:
    """The local model store at ``root`` (``MODELS_PATH``).

    Attributes:
        root: The store directory.
        layout: Its paths.
    """

    def __init__(self, root: Path, *, link: Callable[[Path, Path], None] = os.link) -> None:
        """Open (and create if missing) the store at ``root``.

        Args:
            root: Store directory; created with its parents if missing.
            link: Hard-link function used for bundles (a seam for tests).

        Raises:
            StoreError: The directory cannot be created or written.
        """
        self.root = Path(root)
        self.layout = StoreLayout(self.root)
        self._lock = StoreLock(self.layout.lock_file)
        self._link = link
        # PERF: parsed manifests and configs by model ID. Both files are content-addressed
        # (the ID is the manifest's digest, the config is named by its digest), so an entry can
        # never go stale; it only has to be dropped when the model leaves the index. Without it,
        # GET /models re-parses every manifest and config on every request.
        self._parsed: dict[str, _Parsed] = {}
        # PERF: the index as last read, with the stat of models.json it was read at. Every
        # inference request resolves its model; re-reading and parsing the file each time cost
        # about 7 % of the worker's CPU per streamed answer (bench/relay.py, 64 streams: 23.8 ->
        # 21.7 ms per 1,000 tokens). Writers (this process or the CLI's) replace the file
        # atomically, so a changed file always has a new inode, size or timestamp.
        self._index_cache: tuple[tuple[int, ...], tuple[IndexEntry, ...]] | None = None
        self._index_file = str(self.layout.index_file)
        self._initialize()

    # -- set-up -----------------------------------------------------------------------------

    def _is_foreign(self) -> bool:
        """Return whether ``root`` holds files that no model store has (a misconfiguration)."""
        try:
            names = os.listdir(self.root)
        except OSError as ex:
            raise StoreError(f"cannot read the model store '{self.root}': {ex.strerror}") from ex
        return any(name not in _STORE_ENTRIES and TEMP_MARK not in name for name in names)

    def _initialize(self) -> None:
        ensure_dir(self.root)
        foreign = self._is_foreign()
        with self.lock():
            if not self.layout.layout_file.exists():
                if foreign:
                    # NOTE(store): without layout.json, purge refuses to wipe this directory.
                    log.warning("store directory holds other files, not marking it path=%s",
                                self.root)
                else:
                    write_file_atomic(
                        self.layout.layout_file, go_json({"version": LAYOUT_VERSION}, indent=True)
                    )
            if not self.layout.index_file.exists():
                index.write_index(self.layout.index_file, [])
            ensure_dir(self.layout.blobs_dir / "sha256")
            ensure_dir(self.layout.manifests_dir / "sha256")
            try:
                entries = index.read_index(self.layout.index_file)
            except StoreError as ex:
                # Lookups will report it; purge must stay possible, so opening does not fail.
                log.error("model index unreadable path=%s error=%s", self.root, ex.message)
                entries = []
            migrated = index.migrate_legacy_tags(entries)
            if migrated:
                index.write_index(self.layout.index_file, entries)
                log.info("migrated hf.co tags to huggingface.co count=%d", migrated)
        removed = remove_stale_files(self.layout.blobs_dir)
        removed += bundles.remove_stale_bundle_dirs(self.layout)
        if removed:
            log.info("removed stale partial files count=%d", removed)

    def lock(self) -> AbstractContextManager[None]:
        """Return a context manager holding the inter-process store lock (re-entrant)."""
        return self._lock.hold()

    # -- blobs --------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Return ``blobs/<alg>/<hex>``; the digest is validated (no traversal)."""
        return self.layout.blob_path(digest)

    def incomplete_path(self, digest: str) -> Path:
        """Return ``blobs/<alg>/<hex>.incomplete`` (its directory exists)."""
        path = self.layout.incomplete_path(digest)
        ensure_dir(path.parent)
        return path

    def has_blob(self, digest: str) -> bool:
        """Return whether the blob ``digest`` is complete in the store."""
        return self.layout.blob_path(digest).is_file()

    def write_blob(self, data: bytes) -> str:
        """Store a small blob (config, manifest) and return its ``sha256:`` digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            write_file_atomic(self.layout.blob_path(digest), data)
        return digest

    def import_blob_file(self, path: Path, digest: str | None = None) -> str:
        """Copy a file into the blob store atomically and return its digest.

        Args:
            path: The file to import (e.g. a GGUF given to package).
            digest: Expected digest; when given and already stored, nothing is read.

        Raises:
            DigestMismatchError: The file does not hash to ``digest``.
            StoreError: The file cannot be read or the store written.
        """
        algorithm = parse_digest(digest)[0] if digest is not None else "sha256"
        if digest is not None and self.has_blob(digest):
            return digest
        temp, hex_digest = copy_into_temp(path, self.layout.blobs_dir / algorithm, algorithm)
        actual = f"{algorithm}:{hex_digest}"
        if (digest is not None and actual != digest) or self.has_blob(actual):
            with contextlib.suppress(OSError):
                temp.unlink()
            if digest is not None and actual != digest:
                raise DigestMismatchError(
                    f"file '{path}' hashes to '{actual}', not '{digest}'; it changed while it "
                    f"was read, retry"
                )
            return actual
        publish(temp, self.layout.blob_path(actual))
        return actual

    def commit_incomplete(self, digest: str) -> Path:
        """Verify ``<hex>.incomplete`` hashes to ``digest``, then rename it into place.

        Raises:
            DigestMismatchError: The content is wrong (the partial file is deleted).
            StoreError: There is no partial file, or it cannot be renamed.
        """
        algorithm, hex_digest = parse_digest(digest)
        partial = self.layout.incomplete_path(digest)
        if not partial.is_file():
            raise StoreError(f"no partial download of '{digest}' in the store; pull again")
        actual = hash_file(partial, algorithm)
        if actual != hex_digest:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise DigestMismatchError(
                f"downloaded blob hashes to '{algorithm}:{actual}', not '{digest}'; the "
                f"download was corrupted, pull again"
            )
        fsync_file(partial)
        final = self.layout.blob_path(digest)
        publish(partial, final)
        return final

    def read_blob(self, digest: str) -> bytes:
        """Return a blob's bytes (for small blobs: configs).

        Raises:
            NotFoundError: The blob is not in the store.
        """
        path = self.layout.blob_path(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"blob '{digest}' is not in the store; pull the model again"
            ) from None
        except OSError as ex:
            raise StoreError(f"cannot read blob '{digest}': {ex.strerror}") from ex

    def read_manifest(self, model_id: str) -> bytes:
        """Return the raw manifest of a model in the store.

        Raises:
            StoreError: The manifest file is missing or unreadable.
        """
        path = self.layout.manifest_path(model_id)
        try:
            return path.read_bytes()
        except OSError as ex:
            raise StoreError(
                f"the manifest of model '{model_id}' cannot be read ({ex.strerror}); delete the "
                f"model and pull it again"
            ) from ex

    # -- lookup -------------------------------------------------------------------------------

    def _entries(self) -> list[IndexEntry]:
        return index.read_index(self.layout.index_file)

    def _lookup_entries(self) -> list[IndexEntry]:
        """Return the index for a lookup, re-read only when ``models.json`` has changed.

        For reading only: changes read the file afresh under the store lock (:meth:`_entries`).
        The stat comes before the read, so a file replaced in between is read new and cached
        under the old stat, which only costs one more read next time; it is never stale.
        """
        path = self._index_file
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return []
        except OSError:
            return self._entries()  # read_index reports why, in the store's words
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._index_cache
        if cached is None or cached[0] != key:
            cached = (key, tuple(index.read_index(Path(path))))
            self._index_cache = cached
        return list(cached[1])

    def _record(self, entry: IndexEntry) -> ModelRecord:
        cached = self._parsed.get(entry.id)
        # A file removed behind our back (by hand, or a crash mid-delete) must still show as
        # damaged: two stat calls keep that promise at a fraction of a parse's cost (the paths
        # are kept as text: building them was most of a lookup's cost, issue 18).
        if cached is None or not (
            os.path.isfile(cached.manifest_file) and os.path.isfile(cached.config_file)
        ):
            self._parsed.pop(entry.id, None)
            raw, manifest, config = self._parse(entry.id)
            cached = _Parsed(
                raw,
                manifest,
                config,
                str(self.layout.manifest_path(entry.id)),
                str(self.blob_path(manifest["config"]["digest"])),
            )
            self._parsed[entry.id] = cached
        raw, manifest, config = cached.raw, cached.manifest, cached.config
        return ModelRecord(
            id=entry.id,
            tags=tuple(entry.tags),
            files=tuple(entry.files),
            manifest=manifest,
            config=config,
            manifest_bytes=raw,
        )

    def _parse(self, model_id: str) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
        raw = self.read_manifest(model_id)
        try:
            manifest = parse_manifest(raw)
            config = json.loads(self.read_blob(manifest["config"]["digest"]))
        except (
            InvalidRequestError, UnsupportedModelError, NotFoundError, ValueError, RecursionError
        ) as ex:
            raise StoreError(
                f"model '{model_id}' is damaged in the store ({ex}); delete it and pull it again"
            ) from ex
        if not isinstance(config, dict):
            raise StoreError(
                f"the config of model '{model_id}' is not a JSON object; pull it again"
            )
        return raw, manifest, config

    def list_models(self) -> list[ModelRecord]:
        """Return every readable model in index order (damaged ones are logged and skipped)."""
        records = []
        entries = self._lookup_entries()
        live = {entry.id for entry in entries}
        for stale in [model_id for model_id in self._parsed if model_id not in live]:
            self._parsed.pop(stale, None)
        for entry in entries:
            try:
                records.append(self._record(entry))
            except StoreError as ex:
                log.warning("skipping damaged model id=%s error=%s", entry.id, ex.message)
        return records

    def resolve(self, ref: str, *, partial: bool = False) -> ModelRecord:
        """Find a model by ID, 12-hex short ID, ``name@sha256:...`` or tag.

        Args:
            ref: What the user typed.
            partial: Also accept DMR's fallback: a model with a tag whose last path
                component (before ``:``) equals ``ref`` (``smollm2`` finds ``org/smollm2:v1``).

        Raises:
            InvalidReferenceError: ``ref`` is not a valid reference (checked first).
            ModelNotFoundError: No model matches.
        """
        lookup = index.parse_lookup(ref)
        entries = self._lookup_entries()
        entry, _by_tag = index.match(entries, lookup)
        if entry is None and partial:
            entry = index.find_by_name_component(entries, lookup.text)
        if entry is None:
            raise index.not_found_error(lookup)
        return self._record(entry)

    def find(self, ref: str) -> ModelRecord | None:
        """Return the model ``ref`` names, or ``None`` (invalid text still raises)."""
        try:
            return self.resolve(ref)
        except ModelNotFoundError:
            return None

    # -- changes ------------------------------------------------------------------------------

    def add_model(self, manifest_bytes: bytes, tags: Iterable[str] = ()) -> ModelRecord:
        """Register a model whose blobs are all stored: manifest, index entry, then tags.

        Idempotent; tags move from any other model that holds them.

        Raises:
            InvalidRequestError: The manifest or config blob is malformed (or a tag is invalid).
            UnsupportedModelError: The manifest is an image index or not schema version 2.
            StoreError: A blob the manifest names is not in the store.
        """
        manifest = parse_manifest(manifest_bytes)
        identities = [index.target_identity(tag) for tag in tags]
        model_id = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        files = [str(layer["digest"]) for layer in manifest["layers"]]
        files.append(str(manifest["config"]["digest"]))
        with self.lock():
            # Checked under the lock: a concurrent delete removes unreferenced blobs under it.
            missing = [digest for digest in dict.fromkeys(files) if not self.has_blob(digest)]
            if missing:
                raise StoreError(
                    f"blob '{missing[0]}' named by the manifest is not in the store "
                    f"({len(missing)} missing); pull or load the model again"
                )
            try:
                config = json.loads(self.read_blob(files[-1]))
            except (ValueError, RecursionError) as ex:  # RecursionError: nested too deeply
                raise InvalidRequestError(f"config blob '{files[-1]}' is not valid JSON") from ex
            if not isinstance(config, dict):
                raise InvalidRequestError(f"config blob '{files[-1]}' is not a JSON object")
            manifest_path = self.layout.manifest_path(model_id)
            created = not manifest_path.is_file()
            if created:
                write_file_atomic(manifest_path, manifest_bytes)
            try:
                entries = self._entries()
                entry = index.find_by_id(entries, model_id)
                changed = entry is None
                if entry is None:
                    entry = IndexEntry(id=model_id, tags=[], files=files)
                    entries.append(entry)
                for identity in identities:
                    changed = index.add_tag(entries, model_id, identity) or changed
                if changed:
                    index.write_index(self.layout.index_file, entries)
            except BaseException:
                if created:
                    with contextlib.suppress(OSError):
                        manifest_path.unlink()
                raise
        return ModelRecord(
            id=model_id,
            tags=tuple(entry.tags),
            files=tuple(entry.files),
            manifest=manifest,
            config=config,
            manifest_bytes=manifest_bytes,
        )

    def tag(self, ref: str, target: str) -> str:
        """Give the model ``ref`` (ID, short ID, tag or partial name) the tag ``target``.

        Returns:
            The target's tag identity, e.g. ``docker.io/ai/smollm2:v1``.

        Raises:
            InvalidReferenceError: ``ref`` or ``target`` is invalid.
            ModelNotFoundError: ``ref`` names no model.
        """
        identity = index.target_identity(target)
        record = self.resolve(ref, partial=True)
        with self.lock():
            entries = self._entries()
            if index.find_by_id(entries, record.id) is None:
                raise index.not_found_error(index.parse_lookup(ref))
            if index.add_tag(entries, record.id, identity):
                index.write_index(self.layout.index_file, entries)
        return identity

    def delete(self, ref: str, *, force: bool = False) -> list[dict[str, str]]:
        """Untag or delete a model, as DMR does (spec 2.3).

        A tag reference removes that tag and deletes the model only when it was the last
        one. An ID or digest reference deletes the model; with several tags that needs
        ``force``. Deleting removes the manifest, the bundle and every blob no other model
        uses; files a runner still has open stay readable (unlink only).

        Returns:
            ``[{"Untagged": tag}, ..., {"Deleted": "sha256:..."}]``.

        Raises:
            InvalidReferenceError: ``ref`` is invalid.
            ModelNotFoundError: ``ref`` names no model.
            ConflictError: An ID reference, several tags and no ``force``.
        """
        lookup = index.parse_lookup(ref)
        result: list[dict[str, str]] = []
        with self.lock():
            entries = self._entries()
            entry, by_tag = index.match(entries, lookup)
            if entry is None:
                raise index.not_found_error(lookup)
            distinct = {index.tag_identity(tag) or tag for tag in entry.tags}
            if by_tag and lookup.tag is not None:
                index.remove_tag(entries, lookup.tag)
                result.append({"Untagged": lookup.tag})
                if len(distinct) > 1:
                    index.write_index(self.layout.index_file, entries)
                    return result
            elif len(distinct) > 1 and not force:
                listed = ", ".join(f"'{tag}'" for tag in entry.tags)
                raise ConflictError(
                    f"unable to delete '{lookup.text}' (must be forced) because model "
                    f"'{entry.id}' has several tags ({listed}); delete a tag or use force"
                )
            result.extend({"Untagged": tag} for tag in entry.tags)
            result.append({"Deleted": entry.id})
            entries.remove(entry)
            # The index goes first: a reader never sees an entry whose files are gone.
            index.write_index(self.layout.index_file, entries)
            self._remove_model_files(entry, index.referenced_blobs(entries, excluding=entry.id))
        return result

    def _remove_model_files(self, entry: IndexEntry, keep: set[str]) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.layout.manifest_path(entry.id).unlink()
        bundles.remove_tree(self.layout.bundle_dir(entry.id))
        for digest in dict.fromkeys(entry.files):
            if digest in keep:
                continue
            try:
                self.layout.blob_path(digest).unlink()
            except FileNotFoundError:
                pass
            except (OSError, InvalidRequestError) as ex:
                log.warning("cannot remove blob digest=%s error=%s", digest, ex)

    def remove_unused_blobs(self, digests: Iterable[str]) -> list[str]:
        """Delete those of ``digests`` that no model in the index uses; return them.

        For an import that failed after storing blobs of its own (``load_tar``): a blob that
        a registered model names is kept, whoever stored it. Errors are logged, not raised: the
        caller is already failing with the error that matters.
        """
        removed: list[str] = []
        with self.lock():
            try:
                used = {digest for entry in self._entries() for digest in entry.files}
            except StoreError as ex:
                log.warning("not removing blobs, model index unreadable error=%s", ex.message)
                return removed
            for digest in dict.fromkeys(digests):
                if digest in used:
                    continue
                try:
                    self.layout.blob_path(digest).unlink()
                    removed.append(digest)
                except FileNotFoundError:
                    pass
                except (OSError, InvalidRequestError) as ex:
                    log.warning("cannot remove blob digest=%s error=%s", digest, ex)
        return removed

    def purge(self) -> None:
        """Delete everything in the store directory and re-initialise it.

        Raises:
            StoreError: The directory is not empty and has no ``layout.json`` (it may not be
                a model store: refusing protects a mis-set ``models_path``).
        """
        with self.lock():
            names = [name for name in os.listdir(self.root) if name != ".lock"]
            if names and not self.layout.layout_file.exists():
                raise StoreError(
                    f"refusing to purge '{self.root}': it does not look like a model store "
                    f"(no layout.json); check models_path"
                )
            for name in names:
                bundles.remove_tree(self.root / name)
                if (self.root / name).exists():
                    raise StoreError(f"cannot remove '{self.root / name}' while purging the store")
            self._initialize()

    # -- runtime ------------------------------------------------------------------------------

    def bundle(self, record: ModelRecord) -> Bundle:
        """Return the runtime bundle of ``record``, creating or repairing it as needed.

        Raises:
            UnsupportedModelError: The model has no GGUF weights.
            ModelNotFoundError: The model was deleted meanwhile.
            StoreError: A blob is missing or the bundle cannot be written.
        """
        plan = bundles.plan_bundle(record)
        final = self.layout.bundle_dir(record.id)
        if bundles.is_bundle_valid(self.layout, final, plan):
            return bundles.to_bundle(final, plan, record)
        if index.find_by_id(self._entries(), record.id) is None:
            raise self._deleted_meanwhile(record)
        temp = bundles.assemble_bundle(self.layout, record, plan, link=self._link)
        with self.lock():
            if index.find_by_id(self._entries(), record.id) is None:
                bundles.remove_tree(temp)
                raise self._deleted_meanwhile(record)
            if bundles.is_bundle_valid(self.layout, final, plan):
                bundles.remove_tree(temp)
            elif not bundles.install_bundle(temp, final):
                raise StoreError(f"cannot install the bundle '{final}'; check the store directory")
        return bundles.to_bundle(final, plan, record)

    @staticmethod
    def _deleted_meanwhile(record: ModelRecord) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"model '{record.id}' has been deleted from the local store; pull it again",
            param="model",
        )

    def disk_usage_bytes(self) -> int:
        """Return the bytes used by the store (hard-linked files counted once)."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                with contextlib.suppress(OSError):
                    info = os.lstat(os.path.join(dirpath, name))
                    key = (info.st_dev, info.st_ino)
                    if key not in seen:
                        seen.add(key)
                        total += info.st_size
        return total

