"""Pull GGUF models straight from the Hugging Face Hub (``docs/dmr-spec.md`` section 3.5).

``hf.co/<org>/<repo>[:<quant>]`` is not an OCI registry here, as in current Docker Model Runner:
the file list comes from ``GET {endpoint}/api/models/<repo>/tree/main`` and each file from
``GET {endpoint}/<repo>/resolve/main/<path>`` (with ``Authorization: Bearer $HF_TOKEN`` when a
token is set). The tag picks the quantisation by file-name suffix; the chosen GGUF (every shard)
and a multimodal projector are downloaded into a staging folder in the store root
(``.tmp-huggingface-<key>``), checked against the listing's LFS sha256, packaged as an OCI
artifact and stored under the tag ``huggingface.co/<repo>:<tag>``. An interrupted pull resumes
from the staging folder.

``HF_TOKEN`` goes only to the endpoint's origin (scheme, host, port): a pagination ``Link`` or a
redirect to another origin (the Hub's CDN, or a hostile hub's choice) is followed without it, and
never from https down to http. Listing pages are read through a 16 MiB cap within the registry
deadline; file downloads run under the stall rule (``watchdog.py``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin

import requests

from orchestrator.errors import (
    RegistryDeniedError,
    RegistryError,
    RemoteNotFoundError,
    UnsupportedModelError,
)
from orchestrator.registry.manifest import read_limited
from orchestrator.registry.progress import ProgressCallback, ProgressReporter
from orchestrator.registry.transport import (
    check_cancel,
    check_next_url,
    describe_failure,
    download_to_file,
    exclusive_partial,
    new_session,
    run_parallel,
    same_origin,
)
from orchestrator.registry.watchdog import (
    DEFAULT_DEADLINE_SECONDS,
    DEFAULT_MIN_BYTES_PER_SECOND,
    DEFAULT_STALL_SECONDS,
    StallRule,
    Watch,
)
from orchestrator.store.builder import build_gguf_artifact, store_artifact
from orchestrator.store.reference import ModelRef

if TYPE_CHECKING:
    from orchestrator.store.records import ModelRecord
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"
REVISION = "main"
MAX_LISTING_BYTES = 16 * 1024 * 1024
MAX_LISTING_PAGES = 100
_DEFAULT_TAGS = ("", "latest", "main")
_SHARD = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})$")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repository listing.

    Attributes:
        path: Path inside the repository (``/``-separated).
        size: Size in bytes.
        sha256: Hex sha256 from the LFS pointer, when the file is in LFS.
    """

    path: str
    size: int
    sha256: str | None = None

    @property
    def name(self) -> str:
        """Return the base name of the file."""
        return PurePosixPath(self.path).name

    @property
    def stem(self) -> str:
        """Return the base name without ``.gguf`` and without a shard suffix."""
        stem = self.name[: -len(".gguf")] if self.name.lower().endswith(".gguf") else self.name
        match = _SHARD.match(stem)
        return match.group("base") if match else stem


def _group_key(file: HubFile) -> str:
    return str(PurePosixPath(file.path).parent / file.stem)


def _quant_of(file: HubFile) -> str:
    stem = file.stem
    cut = max(stem.rfind("-"), stem.rfind("."))
    return stem[cut + 1 :] if cut >= 0 else stem


def _matches_quant(file: HubFile, quant: str) -> bool:
    stem = file.stem.lower()
    quant = quant.lower()
    return stem.endswith("-" + quant) or stem.endswith("." + quant)


def _shard_group(files: list[HubFile], first: HubFile, repo: str) -> list[HubFile]:
    """Return every shard of ``first``'s file (just ``[first]`` when not sharded)."""
    key = _group_key(first)
    group = sorted((f for f in files if _group_key(f) == key), key=lambda f: f.path)
    stem = first.name[: -len(".gguf")]
    match = _SHARD.match(stem)
    if match is None:
        return [first]
    count = int(match.group("count"))
    shards = [f for f in group if _SHARD.match(f.name[: -len(".gguf")])]
    if len(shards) != count:
        raise RemoteNotFoundError(
            f"'{repo}' holds {len(shards)} of the {count} shards of '{first.stem}'; the "
            f"repository is incomplete, pick another tag"
        )
    return shards


def select_files(files: list[HubFile], tag: str, repo: str) -> tuple[list[HubFile], HubFile | None]:
    """Choose the GGUF files (all shards) for ``tag`` and a multimodal projector.

    ``latest``, ``main`` or an empty tag choose ``Q4_K_M`` when present, else the first GGUF. A
    projector is a GGUF whose name contains ``mmproj``; ``F16`` is preferred.

    Raises:
        UnsupportedModelError: The repository has no GGUF file.
        RemoteNotFoundError: No GGUF matches the tag.
    """
    ggufs = sorted(
        (f for f in files if f.name.lower().endswith(".gguf") and "mmproj" not in f.name.lower()),
        key=lambda f: f.path,
    )
    projectors = sorted(
        (f for f in files if f.name.lower().endswith(".gguf") and "mmproj" in f.name.lower()),
        key=lambda f: f.path,
    )
    if not ggufs:
        raise UnsupportedModelError(
            f"hugging face repository '{repo}' has no GGUF file; only GGUF repositories can be "
            f"pulled from hugging face"
        )
    if tag.lower() in _DEFAULT_TAGS:
        wanted = [f for f in ggufs if _matches_quant(f, DEFAULT_QUANT)] or ggufs
    else:
        wanted = [f for f in ggufs if _matches_quant(f, tag)]
        if not wanted:
            available = sorted({_quant_of(f) for f in ggufs})
            raise RemoteNotFoundError(
                f"hugging face repository '{repo}' has no GGUF file for tag '{tag}'; use one "
                f"of these tags: {', '.join(available)}"
            )
    chosen = _shard_group(ggufs, wanted[0], repo)
    projector = next((f for f in projectors if "f16" in f.name.lower()), None)
    if projector is None and projectors:
        projector = projectors[0]
    return chosen, projector


def _repo_id(ref: ModelRef) -> str:
    """Return the repository as the user typed it (the Hub's API is case-sensitive)."""
    text = ref.original.split("@", 1)[0]
    first, _, rest = text.partition("/")
    if "." not in first:
        rest = text
    if ":" in rest.rsplit("/", 1)[-1]:
        rest = rest.rsplit(":", 1)[0]
    return rest if rest.lower() == ref.repository else ref.repository


def staging_dir(store_root: Path, endpoint: str, repo: str) -> Path:
    """Return the staging folder of one repository's downloads in the store root.

    The store ignores ``.tmp-`` names at its top level. A failed pull leaves the folder, so the
    next pull of the same repository resumes its partial files.
    """
    key = hashlib.sha256(f"{endpoint.rstrip('/')}\n{repo}\n{REVISION}".encode()).hexdigest()
    return store_root / f".tmp-huggingface-{key[:16]}"


def _staging_name(file: HubFile) -> str:
    name = file.name
    if not _SAFE_NAME.fullmatch(name) or name.endswith(".incomplete"):
        raise UnsupportedModelError(f"refusing the hugging face file name {file.path!r}")
    return name


class HuggingFaceClient:
    """Download GGUF models from the Hugging Face Hub's file API.

    Args:
        endpoint: Base URL of the Hub (``HF_ENDPOINT``), e.g. ``https://huggingface.co``.
        token: ``HF_TOKEN``, sent as ``Authorization: Bearer`` to the endpoint's origin only.
        timeout_seconds: Connect and read timeout of every request.
        max_parallel: Files downloaded at the same time.
        deadline_seconds: Each listing page must arrive within this.
        stall_seconds: Window of the download stall rule.
        min_bytes_per_second: A download slower than this on average over the window is cut
            (the partial file is kept for the next pull).
    """

    def __init__(
        self,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        token: str | None = None,
        timeout_seconds: float = 30.0,
        max_parallel: int = 4,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        min_bytes_per_second: float = DEFAULT_MIN_BYTES_PER_SECOND,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token or None
        self.timeout_seconds = timeout_seconds
        self.max_parallel = max_parallel
        self.deadline_seconds = deadline_seconds
        self.stall = StallRule(stall_seconds, min_bytes_per_second)
        self.session = new_session(pool_size=max_parallel + 2)

    def close(self) -> None:
        """Close the connection pool."""
        self.session.close()

    def __enter__(self) -> HuggingFaceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _timeout(self) -> tuple[float, float]:
        return (self.timeout_seconds, self.timeout_seconds)

    def _get(self, url: str, headers: Mapping[str, str] | None = None) -> requests.Response:
        request_headers = dict(headers or {})
        if self.token and same_origin(url, self.endpoint):
            request_headers["Authorization"] = f"Bearer {self.token}"
        try:
            return self.session.get(
                url,
                headers=request_headers,
                stream=True,
                allow_redirects=False,
                timeout=self._timeout,
            )
        except requests.RequestException as ex:
            raise RegistryError(
                f"could not reach hugging face at '{self.endpoint}' ({describe_failure(ex)}); "
                f"check the network "
                f"or HF_ENDPOINT",
                details={"url": url, "error": str(ex)},
            ) from ex

    def _check(self, response: requests.Response, what: str, repo: str) -> None:
        status = response.status_code
        details: dict[str, object] = {"status": status, "url": response.url}
        if status in (401, 403):
            hint = (
                "check that HF_TOKEN may read it"
                if self.token
                else "it may be private or gated: set HF_TOKEN"
            )
            raise RegistryDeniedError(
                f"hugging face denied access to '{repo}' (HTTP {status}); {hint}",
                details=details,
            )
        if status == 404:
            raise RemoteNotFoundError(
                f"{what} was not found on hugging face; check the repository name and tag",
                details=details,
            )
        if status >= 400:
            raise RegistryError(
                f"hugging face answered HTTP {status} for {what}; try again later",
                details=details,
            )

    def list_files(self, repo: str) -> list[HubFile]:
        """Return every file of ``repo`` at ``main`` (directories listed recursively).

        Raises:
            RemoteNotFoundError: No such repository.
            RegistryDeniedError: The repository needs a (different) token.
        """
        files: dict[str, HubFile] = {}
        listed: set[str] = set()
        pending = [""]
        pages = 0
        while pending:
            folder = pending.pop()
            if folder in listed:
                continue
            listed.add(folder)
            folders: list[str] = []
            url: str | None = (
                f"{self.endpoint}/api/models/{repo}/tree/{REVISION}"
                f"{'/' + quote(folder) if folder else ''}?recursive=true"
            )
            while url is not None:
                pages += 1
                if pages > MAX_LISTING_PAGES:
                    raise RegistryError(f"the file listing of '{repo}' is too long to read")
                entries, url = self._list_page(url, repo)
                for entry in entries:
                    self._add_entry(entry, files, folders)
            # A server that ignores recursive=true lists folders without their files.
            pending.extend(
                folder
                for folder in folders
                if folder not in listed and not any(p.startswith(folder + "/") for p in files)
            )
        return sorted(files.values(), key=lambda f: f.path)

    def _list_page(self, url: str, repo: str) -> tuple[list[Any], str | None]:
        watch = Watch(
            subject=f"hugging face at '{self.endpoint}'",
            what=f"a page of the file list of '{repo}'",
            deadline_seconds=self.deadline_seconds,
        )
        with watch:
            response = self._get(url, {"Accept": "application/json"})
            with response:
                self._check(response, f"repository '{repo}'", repo)
                data = read_limited(response, MAX_LISTING_BYTES, f"the file list of '{repo}'")
                link = _NEXT_LINK.search(response.headers.get("Link", ""))
        following = urljoin(url, link.group(1)) if link else None
        if following is not None:
            # _get sends HF_TOKEN only if the next page is on the endpoint's origin.
            check_next_url(url, following, f"the file list of '{repo}'")
        try:
            entries = json.loads(data)
        except ValueError as ex:
            raise RegistryError(f"hugging face sent an unreadable file list for '{repo}'") from ex
        if not isinstance(entries, list):
            raise RegistryError(f"hugging face sent an unexpected file list for '{repo}'")
        return entries, following

    @staticmethod
    def _add_entry(entry: Any, files: dict[str, HubFile], folders: list[str]) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            return
        path = entry["path"]
        if entry.get("type") == "directory":
            folders.append(path)
            return
        pointer = entry.get("lfs")
        lfs: dict[str, Any] = pointer if isinstance(pointer, dict) else {}
        sha = lfs.get("oid") or lfs.get("sha256") or entry.get("sha256")
        size = lfs.get("size", entry.get("size"))
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return
        if not (isinstance(sha, str) and re.fullmatch(r"[a-f0-9]{64}", sha)):
            sha = None
        files[path] = HubFile(path, size, sha)

    def pull(
        self, ref: ModelRef, store: Store, progress: ProgressCallback | None = None
    ) -> ModelRecord:
        """Pull a GGUF model from the Hub into ``store`` under ``ref.tag_string``.

        Raises:
            RemoteNotFoundError: No such repository, or no GGUF for the tag.
            RegistryDeniedError: The repository needs a (different) token.
            UnsupportedModelError: The repository has no GGUF.
            DigestMismatchError: A file does not match its LFS sha256 (nothing stored).
            RegistryError: The Hub is unreachable or failed.
        """
        reporter = ProgressReporter(progress, mode="pull")
        cached = store.find(ref.tag_string)
        if cached is not None:
            reporter.success(f"Using cached model: {cached.model_config.get('size', '')}")
            return cached
        repo = _repo_id(ref)
        files = self.list_files(repo)
        ggufs, projector = select_files(files, ref.tag, repo)
        wanted = ggufs + ([projector] if projector else [])
        reporter.total = sum(f.size for f in wanted)
        staging = staging_dir(Path(store.root), self.endpoint, repo)
        try:
            staging.mkdir(parents=True, exist_ok=True)
        except OSError as ex:
            raise RegistryError(
                f"could not create the staging folder '{staging}' ({describe_failure(ex)}); "
                f"check the store's permissions and free space"
            ) from ex
        cancel = threading.Event()
        run_parallel(
            self.max_parallel,
            [functools.partial(self._download, repo, f, staging, reporter, cancel) for f in wanted],
            cancel,
        )
        artifact = build_gguf_artifact(
            staging / _staging_name(ggufs[0]),
            mmproj=staging / _staging_name(projector) if projector else None,
        )
        record = store_artifact(store, artifact, [ref.tag_string])
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        reporter.success("Model pulled successfully")
        log.info("model pulled from hugging face repo=%s tag=%s id=%s", repo, ref.tag, record.id)
        return record

    def _download(
        self,
        repo: str,
        file: HubFile,
        staging: Path,
        reporter: ProgressReporter,
        cancel: threading.Event,
    ) -> None:
        name = _staging_name(file)
        target = staging / name
        layer_id = f"sha256:{file.sha256}" if file.sha256 else file.path

        watch = Watch(
            subject=f"hugging face at '{self.endpoint}'",
            what=f"the download of '{file.path}' of '{repo}'",
            retry="pull again (it resumes)",
            stall=self.stall,
        )

        def on_bytes(done: int) -> None:
            watch.progress(done)
            check_cancel(cancel)
            reporter.update(layer_id, file.size, done)

        if target.is_file() and target.stat().st_size == file.size:
            # Only verified downloads are renamed to their final name.
            reporter.update(layer_id, file.size, file.size)
            return
        partial = staging / f"{name}.incomplete"
        with exclusive_partial(partial, stall_seconds=max(60.0, 2 * self.timeout_seconds)):
            if target.is_file() and target.stat().st_size == file.size:
                reporter.update(layer_id, file.size, file.size)
                return
            with watch:
                download_to_file(
                    lambda url, headers: self._get(url, headers),
                    self.session,
                    f"{self.endpoint}/{repo}/resolve/{REVISION}/{quote(file.path)}",
                    partial,
                    what=f"file '{file.path}' of '{repo}'",
                    size=file.size,
                    sha256_hex=file.sha256,
                    check=lambda response, what: self._check(response, what, repo),
                    timeout=self._timeout,
                    on_bytes=on_bytes,
                )
            try:
                with open(partial, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(partial, target)
            except OSError as ex:
                raise RegistryError(
                    f"could not finish '{target}' ({describe_failure(ex)}); check the store's "
                    f"free space and pull again"
                ) from ex
