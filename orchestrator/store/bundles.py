"""Runtime bundles: ``bundles/sha256/<id>/`` with hard links to blobs (DMR spec section 2.2).

A bundle gives ``llama-server`` ordinary file names for content-addressed blobs::

    config.json                      the model config (compact JSON, as DMR writes it)
    model/model.gguf                 single GGUF file, or model-00001-of-0000N.gguf shards
    model/model.mmproj               multimodal projector
    model/template.jinja             chat template
    model/<annotated path>           config v0.2 / CNCF layers keep their filepath annotation

The file names are a pure function of the manifest (:func:`plan_bundle`), so an existing bundle
is checked against the plan and rebuilt when anything is missing or of the wrong size. A new
bundle is assembled in a temporary sibling directory and renamed into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import posixpath
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import StoreError, UnsupportedModelError
from orchestrator.store import mediatypes
from orchestrator.store.layout import (
    STALE_TEMP_SECONDS,
    StoreLayout,
    ensure_dir,
    go_json,
    link_or_copy,
)
from orchestrator.store.records import Bundle, ModelRecord, is_mmproj_name

MODEL_SUBDIR = "model"
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class BundlePlan:
    """Which blob goes to which path under ``model/``.

    Attributes:
        files: ``(relative path, digest)`` pairs.
        gguf: Relative path of the GGUF file (first shard).
        mmproj: Relative path of the projector, if any.
        template: Relative path of the chat template, if any.
    """

    files: tuple[tuple[str, str], ...]
    gguf: str
    mmproj: str | None
    template: str | None


def safe_relative_path(path: str) -> str | None:
    """Return a normalised relative path inside ``model/``, or ``None`` if it cannot be made safe.

    Like DMR, leading ``../`` segments are stripped (some packagers write them) rather than
    flattening the path; absolute paths and anything still escaping are refused.
    """
    if not path or "\\" in path or "\x00" in path or path.startswith("/"):
        return None
    cleaned = posixpath.normpath(path)
    while cleaned.startswith("../"):
        cleaned = cleaned[3:]
    if cleaned in ("", ".", "..") or cleaned.startswith("/") or ".." in cleaned.split("/"):
        return None
    return cleaned


def _annotated_path(layer: dict[str, object]) -> str | None:
    annotations = layer.get("annotations")
    if not isinstance(annotations, dict):
        return None
    value = annotations.get(mediatypes.ANNOTATION_FILEPATH)
    return safe_relative_path(value) if isinstance(value, str) else None


def _single(record: ModelRecord, media_type: str) -> str | None:
    digests = [
        str(layer["digest"]) for layer in record.layers if layer.get("mediaType") == media_type
    ]
    return digests[0] if len(digests) == 1 else None


def _legacy_plan(record: ModelRecord) -> BundlePlan | None:
    """Plan for config v0.1: fixed names, as DMR's ``unpackLegacy`` writes them."""
    gguf_digests = [str(layer["digest"]) for layer in record.gguf_layers]
    if not gguf_digests:
        return None
    files: list[tuple[str, str]] = []
    if len(gguf_digests) == 1:
        files.append(("model.gguf", gguf_digests[0]))
    else:
        count = len(gguf_digests)
        files.extend(
            (f"model-{number:05d}-of-{count:05d}.gguf", digest)
            for number, digest in enumerate(gguf_digests, start=1)
        )
    mmproj = _single(record, mediatypes.MMPROJ)
    template = _single(record, mediatypes.CHAT_TEMPLATE)
    if mmproj is not None:
        files.append(("model.mmproj", mmproj))
    if template is not None:
        files.append(("template.jinja", template))
    taken = {name for name, _digest in files}
    for layer in record.layers:
        path = _annotated_path(layer)
        if layer.get("mediaType") == mediatypes.MODEL_FILE and path and path not in taken:
            files.append((path, str(layer["digest"])))
            taken.add(path)
    return BundlePlan(
        files=tuple(files),
        gguf=files[0][0],
        mmproj="model.mmproj" if mmproj else None,
        template="template.jinja" if template else None,
    )


def _per_file_plan(record: ModelRecord) -> BundlePlan | None:
    """Plan for config v0.2 / CNCF: every annotated layer keeps its path."""
    gguf_ids = {id(layer) for layer in record.gguf_layers}
    files: list[tuple[str, str]] = []
    taken: set[str] = set()
    gguf = mmproj = template = None
    for layer in record.layers:
        path = _annotated_path(layer)
        if path is None or path in taken:
            continue
        taken.add(path)
        files.append((path, str(layer["digest"])))
        media_type = layer.get("mediaType")
        if media_type == mediatypes.MMPROJ or (
            media_type == mediatypes.CNCF_WEIGHT_RAW and is_mmproj_name(path)
        ):
            mmproj = mmproj or path
        elif media_type == mediatypes.CHAT_TEMPLATE:
            template = template or path
        elif id(layer) in gguf_ids:
            gguf = gguf or path
    if gguf is None:
        return None
    return BundlePlan(files=tuple(files), gguf=gguf, mmproj=mmproj, template=template)


def plan_bundle(record: ModelRecord) -> BundlePlan:
    """Return the bundle layout of ``record``.

    Raises:
        UnsupportedModelError: The model has no GGUF weights (this runner serves GGUF only).
    """
    plan = _per_file_plan(record) if record.is_layer_per_file else None
    plan = plan or _legacy_plan(record)
    if plan is None:
        name = record.tags[0] if record.tags else record.id
        raise UnsupportedModelError(
            f"model '{name}' has no GGUF weights; this runner serves GGUF models only, "
            f"pull a GGUF variant"
        )
    return plan


def config_bytes(record: ModelRecord) -> bytes:
    """Return ``config.json`` of the bundle: compact JSON and a newline (Go's Encoder)."""
    return go_json(record.model_config) + b"\n"


def is_bundle_valid(layout: StoreLayout, root: Path, plan: BundlePlan) -> bool:
    """Return whether ``root`` holds every planned file with its blob's size and a config."""
    try:
        json.loads((root / CONFIG_FILE).read_bytes())
        for relative, digest in plan.files:
            target = (root / MODEL_SUBDIR / relative).lstat()
            blob = layout.blob_path(digest).stat()
            if not stat.S_ISREG(target.st_mode) or target.st_size != blob.st_size:
                return False
    except (OSError, ValueError):
        return False
    return True


def assemble_bundle(
    layout: StoreLayout,
    record: ModelRecord,
    plan: BundlePlan,
    *,
    link: Callable[[Path, Path], None] = os.link,
) -> Path:
    """Build the bundle of ``record`` in a new temporary directory and return its path."""
    final = layout.bundle_dir(record.id)
    ensure_dir(final.parent)
    try:
        temp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    except OSError as ex:
        raise StoreError(f"cannot create a bundle directory in '{final.parent}': {ex}") from ex
    try:
        os.chmod(temp, 0o755)
        model_dir = temp / MODEL_SUBDIR
        for relative, digest in plan.files:
            target = model_dir / relative
            ensure_dir(target.parent)
            source = layout.blob_path(digest)
            if not source.is_file():
                raise StoreError(
                    f"blob '{digest}' of model '{record.id}' is missing from the store; "
                    f"pull the model again"
                )
            link_or_copy(source, target, link=link)
        (temp / CONFIG_FILE).write_bytes(config_bytes(record))
        os.chmod(temp / CONFIG_FILE, 0o644)
    except BaseException:
        remove_tree(temp)
        raise
    return temp


def install_bundle(temp: Path, final: Path) -> bool:
    """Rename ``temp`` to ``final``, moving a corrupt ``final`` aside first.

    Returns:
        ``False`` when another writer installed ``final`` first (``temp`` is then removed).
    """
    stale: Path | None = None
    if final.exists() or final.is_symlink():
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(final, stale)
        except OSError as ex:
            remove_tree(temp)
            raise StoreError(f"cannot replace the corrupt bundle '{final}': {ex}") from ex
    try:
        os.rename(temp, final)
    except OSError:
        remove_tree(temp)
        return False
    finally:
        if stale is not None:
            # Unlink only: a runner that still has a file of the old bundle open keeps it.
            remove_tree(stale)
    return True


def to_bundle(root: Path, plan: BundlePlan, record: ModelRecord) -> Bundle:
    """Return the ``Bundle`` view of an installed bundle directory."""
    model_dir = root / MODEL_SUBDIR
    return Bundle(
        root=root,
        gguf_path=model_dir / plan.gguf,
        mmproj_path=model_dir / plan.mmproj if plan.mmproj else None,
        chat_template_path=model_dir / plan.template if plan.template else None,
        config=record.model_config,
    )


def remove_tree(path: Path) -> None:
    """Delete a directory tree (or file) if present, ignoring what is already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_bundle_dirs(layout: StoreLayout, *, now: float | None = None) -> int:
    """Delete temporary and replaced bundle directories older than a day."""
    current = time.time() if now is None else now
    removed = 0
    for algorithm in ("sha256", "sha512"):
        directory = layout.bundles_dir / algorithm
        if not directory.is_dir():
            continue
        for child in directory.iterdir():
            if not child.name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                if current - child.lstat().st_mtime > STALE_TEMP_SECONDS:
                    remove_tree(child)
                    removed += 1
    return removed

