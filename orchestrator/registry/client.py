"""OCI distribution client: pull, push and inspect model artifacts (DMR spec section 3.5).

Built on ``requests`` only (oras-py was measured and rejected: it buffers and cannot resume):
streamed bodies in both directions, a timeout on every request, digests checked on every byte that
reaches the store. A pull resolves the tag to a manifest digest once, stores the config blob,
downloads the layers in parallel into the store's ``.incomplete`` files (resuming them with
``Range``), commits them, and only then writes the manifest and the tag. A push uploads each
missing blob with ``POST`` and one streamed ``PUT`` (layers in parallel, then the config) and
finally ``PUT``s the exact manifest bytes, so the model ID is the same on both sides.

Hostile registries (hardening issue 12): ``Authorization`` goes only to the registry's own origin
(an upload ``Location`` or redirect elsewhere gets none, an https to http hop is refused; token
realms follow the rule in ``auth.py``); every body read whole is capped (``manifest.py``); every
exchange runs under a :class:`~orchestrator.registry.watchdog.Watch`: small ones within
``deadline_seconds``, blob transfers under the stall rule (``stall_seconds``,
``min_bytes_per_second``), so a trickling registry cannot hold a pull or push slot forever.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urljoin

import requests

from orchestrator.errors import (
    DigestMismatchError,
    RegistryDeniedError,
    RegistryError,
    RemoteNotFoundError,
)
from orchestrator.registry.auth import (
    Authenticator,
    api_host,
    load_credentials,
    stored_credential_hosts,
)
from orchestrator.registry.manifest import (
    Descriptor,
    config_descriptor,
    discard_body,
    error_codes,
    layer_descriptors,
    model_json,
    parse_for_transfer,
    read_limited,
)
from orchestrator.registry.mount import mount_sources
from orchestrator.registry.progress import ProgressCallback, ProgressReporter
from orchestrator.registry.request_auth import RequestAuth
from orchestrator.registry.transport import (
    CountingReader,
    check_cancel,
    check_next_url,
    describe_failure,
    download_to_file,
    exclusive_partial,
    file_opener,
    new_session,
    open_following_redirects,
    run_parallel,
    same_origin,
    with_digest,
)
from orchestrator.registry.watchdog import (
    DEFAULT_DEADLINE_SECONDS,
    DEFAULT_MIN_BYTES_PER_SECOND,
    DEFAULT_STALL_SECONDS,
    StallRule,
    Watch,
)
from orchestrator.store import mediatypes
from orchestrator.store.reference import ModelRef, is_insecure_registry

if TYPE_CHECKING:
    from orchestrator.store.builder import Artifact
    from orchestrator.store.records import ModelRecord
    from orchestrator.store.store import Store

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 64 * 1024 * 1024
# A request is sent again at most this often after 401 challenges (Basic, token, wider scope).
_MAX_CHALLENGES = 2
# Once an upload's last byte is sent, the registry still verifies and stores the blob (an S3
# backend copies it): its answer may take the small deadline plus one second per this many bytes.
_STORE_BYTES_PER_SECOND = 64 * 1024 * 1024

Body = Callable[[], "bytes | CountingReader"]


class RegistryClient:
    """Talk to OCI registries for pull, push and remote inspect.

    Args:
        insecure_registries: Extra registries reached over plain HTTP (loopback and ``*.local``
            always are).
        bearer_token: Token sent as ``Authorization: Bearer`` without any exchange.
        docker_config_dir: Directory of Docker's ``config.json`` (else ``$DOCKER_CONFIG`` or
            ``~/.docker``).
        timeout_seconds: Connect and read timeout of every request.
        max_parallel: Layers transferred at the same time.
        environ: Environment for ``$DOCKER_CONFIG``, ``$HOME`` and credential helpers.
        deadline_seconds: Each small exchange (manifest, config, token, error answer) must end
            within this, answer included.
        stall_seconds: Window of the blob stall rule.
        min_bytes_per_second: A blob transfer slower than this on average over the window is
            cut (the partial download is kept for the next pull).
        request_auth: Credentials that came with the API request (``X-Registry-Auth``); they
            replace the stored ones for their own registry only.
    """

    def __init__(
        self,
        *,
        insecure_registries: tuple[str, ...] = (),
        bearer_token: str | None = None,
        docker_config_dir: Path | None = None,
        timeout_seconds: float = 30.0,
        max_parallel: int = 5,
        environ: Mapping[str, str] | None = None,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        min_bytes_per_second: float = DEFAULT_MIN_BYTES_PER_SECOND,
        request_auth: RequestAuth | None = None,
    ) -> None:
        self.request_auth = request_auth
        self.insecure_registries = tuple(insecure_registries)
        self.bearer_token = bearer_token or None
        self.docker_config_dir = docker_config_dir
        self.timeout_seconds = timeout_seconds
        self.max_parallel = max(1, max_parallel)
        self.environ = environ
        self.deadline_seconds = deadline_seconds
        self.stall = StallRule(stall_seconds, min_bytes_per_second)
        self.session = new_session(pool_size=self.max_parallel + 2)
        self._auth: dict[str, Authenticator] = {}
        self._auth_lock = threading.Lock()

    def close(self) -> None:
        """Close the connection pool."""
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def _timeout(self) -> tuple[float, float]:
        return (self.timeout_seconds, self.timeout_seconds)

    def _repo_url(self, ref: ModelRef) -> str:
        insecure = is_insecure_registry(ref.registry, self.insecure_registries)
        scheme = "http" if insecure else "https"
        return f"{scheme}://{api_host(ref.registry)}/v2/{ref.repository}"

    def _authenticator(self, registry: str) -> Authenticator:
        with self._auth_lock:
            found = self._auth.get(registry)
            if found is None:
                credentials = None
                bearer_token = self.bearer_token
                trusted: frozenset[str] = frozenset()
                given = self.request_auth
                if given is not None and given.applies_to(registry) and not bearer_token:
                    # The request's own credentials, for their registry only; a mirror or
                    # another registry of the same transfer keeps the daemon's.
                    credentials, bearer_token = given.credentials, given.registry_token
                    trusted = stored_credential_hosts(self.docker_config_dir, self.environ)
                elif not bearer_token:
                    credentials = load_credentials(
                        registry, docker_config_dir=self.docker_config_dir, environ=self.environ
                    )
                    trusted = stored_credential_hosts(self.docker_config_dir, self.environ)
                found = Authenticator(
                    self.session,
                    registry,
                    credentials=credentials,
                    bearer_token=bearer_token,
                    insecure=is_insecure_registry(registry, self.insecure_registries),
                    timeout_seconds=self.timeout_seconds,
                    trusted_hosts=trusted,
                    deadline_seconds=self.deadline_seconds,
                )
                self._auth[registry] = found
            return found

    def _send(
        self,
        ref: ModelRef,
        method: str,
        url: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
    ) -> requests.Response:
        """Send one request with authorization, answering up to two 401 challenges.

        ``body`` is a factory, so a streamed file can be opened again after a challenge. The
        answer is always streamed: its body is read (capped) or dropped by the caller, never
        loaded whole by ``requests``. ``Authorization`` goes only to the registry's own origin;
        a URL elsewhere (an upload ``Location`` on another host) gets none and no challenge
        is answered for it.
        """
        auth = self._authenticator(ref.registry)
        own_origin = same_origin(url, self._repo_url(ref))
        for attempt in range(_MAX_CHALLENGES + 1):
            sent = auth.authorization(scope) if own_origin else None
            request_headers = dict(headers or {})
            if sent:
                request_headers["Authorization"] = sent
            data = body() if body is not None else None
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=request_headers,
                    data=data,
                    stream=True,
                    allow_redirects=False,
                    timeout=self._timeout,
                )
            except requests.RequestException as ex:
                raise RegistryError(
                    f"could not reach registry '{ref.registry}' ({describe_failure(ex)}); "
                    f"check that it is running and reachable",
                    details={"url": url, "method": method, "error": str(ex)},
                ) from ex
            finally:
                if isinstance(data, CountingReader):
                    data.close()
            if (
                response.status_code == 401
                and own_origin
                and attempt < _MAX_CHALLENGES
                and auth.handle_unauthorized(response, scope, sent)
            ):
                discard_body(response)  # keeps the connection for the retry
                response.close()
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, response: requests.Response, what: str, ref: ModelRef, action: str) -> None:
        """Raise the error that matches a failed response (nothing for 2xx/3xx)."""
        status = response.status_code
        if status < 400:
            return
        codes = error_codes(response)
        details: dict[str, object] = {"status": status, "codes": codes, "url": response.url}
        shown = f" ({', '.join(codes)})" if codes else ""
        if status in (401, 403):
            raise RegistryDeniedError(
                f"registry '{ref.registry}' denied {action} access to '{ref.repository}' "
                f"(HTTP {status}{shown}); the repository may not exist, or run "
                f"'docker login {ref.registry}' with an account that may {action} it"
                f"{self._authenticator(ref.registry).withheld_hint()}",
                details=details,
            )
        if status == 404:
            raise RemoteNotFoundError(
                f"{what} was not found in registry '{ref.registry}'{shown}; check the name and tag",
                details=details,
            )
        raise RegistryError(
            f"registry '{ref.registry}' answered HTTP {status}{shown} for {what}; try again later",
            details=details,
        )

    @staticmethod
    def _scope(ref: ModelRef, push: bool = False) -> str:
        return f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"

    def _deadline(self, ref: ModelRef, what: str) -> Watch:
        """Return the watch of one small exchange: all of it within ``deadline_seconds``."""
        return Watch(
            subject=f"registry '{ref.registry}'", what=what, deadline_seconds=self.deadline_seconds
        )

    def _stall_watch(self, ref: ModelRef, what: str, retry: str) -> Watch:
        """Return the watch of one blob transfer (the stall rule)."""
        return Watch(subject=f"registry '{ref.registry}'", what=what, retry=retry, stall=self.stall)

    # -- reading ------------------------------------------------------------------------------

    def fetch_manifest(self, ref: ModelRef) -> tuple[bytes, dict[str, Any]]:
        """Return the raw manifest bytes and the parsed manifest of ``ref``.

        Raises:
            RemoteNotFoundError: No such repository or tag.
            DigestMismatchError: A digest reference got other bytes.
            UnsupportedModelError: Not a single-manifest model artifact.
        """
        url = f"{self._repo_url(ref)}/manifests/{ref.digest or ref.tag}"
        with self._deadline(ref, f"the manifest of '{ref}'"):
            response = open_following_redirects(
                self._fetcher(ref),
                self.session,
                url,
                {"Accept": mediatypes.MANIFEST_ACCEPT},
                timeout=self._timeout,
            )
            with response:
                self._check(response, f"model '{ref}'", ref, "pull")
                if response.status_code != 200:
                    raise RegistryError(
                        f"registry '{ref.registry}' answered HTTP {response.status_code} for the "
                        f"manifest of '{ref}'; try again later"
                    )
                data = read_limited(response, MAX_MANIFEST_BYTES, f"the manifest of '{ref}'")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ref.digest and digest != ref.digest:
            raise DigestMismatchError(
                f"registry '{ref.registry}' sent a manifest with digest '{digest}' for "
                f"'{ref}'; the registry is serving corrupt data",
                details={"expected": ref.digest, "actual": digest},
            )
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return data, parse_for_transfer(data, str(ref), content_type)

    def _fetch_small_blob(self, ref: ModelRef, blob: Descriptor, limit: int) -> bytes:
        url = f"{self._repo_url(ref)}/blobs/{blob.digest}"
        with self._deadline(ref, f"blob '{blob.digest}' of '{ref}'"):
            response = open_following_redirects(
                self._fetcher(ref), self.session, url, {}, timeout=self._timeout
            )
            with response:
                self._check(response, f"blob '{blob.digest}' of '{ref}'", ref, "pull")
                data = read_limited(response, min(limit, blob.size + 1), f"blob '{blob.digest}'")
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != blob.digest or len(data) != blob.size:
            raise DigestMismatchError(
                f"blob '{blob.digest}' of '{ref}' arrived as {len(data)} bytes with digest "
                f"'{actual}'; the registry is serving corrupt data, nothing was stored",
                details={"expected": blob.digest, "actual": actual},
            )
        return data

    def _fetcher(self, ref: ModelRef) -> Callable[[str, Mapping[str, str]], requests.Response]:
        def fetch(url: str, headers: Mapping[str, str]) -> requests.Response:
            return self._send(ref, "GET", url, scope=self._scope(ref), headers=headers)

        return fetch

    def remote_model(self, ref: ModelRef) -> dict[str, Any]:
        """Return the DMR Model JSON of the remote artifact (``id``, ``created``, ``config``)."""
        data, manifest = self.fetch_manifest(ref)
        config_blob = config_descriptor(manifest)
        config = self._fetch_small_blob(ref, config_blob, MAX_CONFIG_BYTES)
        return model_json("sha256:" + hashlib.sha256(data).hexdigest(), manifest, config)

    # -- pull ---------------------------------------------------------------------------------

    def pull(
        self,
        ref: ModelRef,
        store: Store,
        progress: ProgressCallback | None = None,
        *,
        source: ModelRef | None = None,
    ) -> ModelRecord:
        """Pull ``ref`` into ``store`` and tag it with ``ref.tag_string``.

        A bare digest reference (``name@sha256:…``) adds no tag. Layers download in parallel;
        ``progress`` is called from those threads (serialised by the reporter). ``source``
        is where the bytes come from when that is not ``ref``'s registry (a mirror: the same
        repository and tag on another host); the tag is still ``ref``'s.

        Raises:
            RemoteNotFoundError: No such repository, tag or blob.
            RegistryDeniedError: The registry refused our credentials.
            UnsupportedModelError: The config media type is not a model config we know.
            DigestMismatchError: Downloaded bytes do not match their digest (nothing stored).
            RegistryError: The registry is unreachable or failed.
        """
        tags = _tags_for(ref)
        ref = source or ref
        data, manifest = self.fetch_manifest(ref)
        model_id = "sha256:" + hashlib.sha256(data).hexdigest()
        layers = layer_descriptors(manifest)
        config_blob = config_descriptor(manifest)
        reporter = ProgressReporter(progress, mode="pull", total=sum(x.size for x in layers))
        if store.find(model_id) is not None:
            record = store.add_model(data, tags)
            reporter.success(f"Using cached model: {record.model_config.get('size', '')}")
            return record

        if not store.has_blob(config_blob.digest):
            written = store.write_blob(self._fetch_small_blob(ref, config_blob, MAX_CONFIG_BYTES))
            if written != config_blob.digest:
                raise DigestMismatchError(
                    f"the store wrote config blob '{written}' instead of '{config_blob.digest}'"
                )
        unique = list({layer.digest: layer for layer in layers}.values())
        cancel = threading.Event()
        run_parallel(
            self.max_parallel,
            [functools.partial(self._pull_layer, ref, store, x, reporter, cancel) for x in unique],
            cancel,
        )
        record = store.add_model(data, tags)
        reporter.success("Model pulled successfully")
        log.info("model pulled ref=%s id=%s layers=%d", ref, model_id, len(unique))
        return record

    def _pull_layer(
        self,
        ref: ModelRef,
        store: Store,
        layer: Descriptor,
        reporter: ProgressReporter,
        cancel: threading.Event,
    ) -> None:
        what = f"layer '{layer.digest}' of '{ref}'"
        watch = self._stall_watch(ref, f"the download of {what}", "pull again (it resumes)")

        def on_bytes(done: int) -> None:
            watch.progress(done)
            check_cancel(cancel)
            reporter.update(layer.digest, layer.size, done)

        if store.has_blob(layer.digest):
            reporter.update(layer.digest, layer.size, layer.size)
            return
        partial = store.incomplete_path(layer.digest)
        with exclusive_partial(partial, stall_seconds=max(60.0, 2 * self.timeout_seconds)):
            if store.has_blob(layer.digest):
                reporter.update(layer.digest, layer.size, layer.size)
                return
            with watch:
                download_to_file(
                    self._fetcher(ref),
                    self.session,
                    f"{self._repo_url(ref)}/blobs/{layer.digest}",
                    partial,
                    what=what,
                    size=layer.size,
                    sha256_hex=layer.digest.removeprefix("sha256:"),
                    check=lambda response, what: self._check(response, what, ref, "pull"),
                    timeout=self._timeout,
                    on_bytes=on_bytes,
                )
            store.commit_incomplete(layer.digest)

    # -- push ---------------------------------------------------------------------------------

    def push(
        self,
        record: ModelRecord,
        target: ModelRef,
        store: Store,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Push a stored model to ``target``; return the manifest digest.

        Raises:
            RegistryDeniedError: The registry refused our credentials.
            RegistryError: The registry is unreachable, failed, or stored other bytes.
        """
        data = _stored_manifest(store, record)
        manifest = parse_for_transfer(data, target.tag_string)
        config_blob = config_descriptor(manifest)
        blobs = [
            (layer, file_opener(store.blob_path(layer.digest)))
            for layer in layer_descriptors(manifest)
        ]
        config = (config_blob, file_opener(store.blob_path(config_blob.digest)))
        # Blobs a local model of another repository of this registry holds can be mounted.
        mounts = mount_sources(store.list_models(), target)
        return self._push(target, data, manifest, blobs, config, progress, mounts)

    def push_artifact(
        self, artifact: Artifact, target: ModelRef, progress: ProgressCallback | None = None
    ) -> str:
        """Push a freshly built artifact straight from its files; return the manifest digest."""
        manifest = parse_for_transfer(artifact.manifest_bytes, target.tag_string)
        config_blob = config_descriptor(manifest)
        blobs = [
            (Descriptor(layer.media_type, layer.digest, layer.size), file_opener(layer.path))
            for layer in artifact.layers
        ]
        config_bytes = artifact.config_bytes
        config = (config_blob, lambda: io.BytesIO(config_bytes))
        return self._push(target, artifact.manifest_bytes, manifest, blobs, config, progress)

    def _push(
        self,
        target: ModelRef,
        data: bytes,
        manifest: dict[str, Any],
        blobs: list[tuple[Descriptor, Callable[[], IO[bytes]]]],
        config: tuple[Descriptor, Callable[[], IO[bytes]]],
        progress: ProgressCallback | None,
        mounts: Mapping[str, str] | None = None,
    ) -> str:
        reporter = ProgressReporter(progress, mode="push", total=sum(b.size for b, _ in blobs))
        unique = list({blob.digest: (blob, opener) for blob, opener in blobs}.values())
        cancel = threading.Event()
        mounts = mounts or {}
        run_parallel(
            self.max_parallel,
            [
                functools.partial(
                    self._push_blob, target, b, o, reporter, cancel, mounts.get(b.digest)
                )
                for b, o in unique
            ],
            cancel,
        )
        self._push_blob(target, config[0], config[1], None, cancel)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        media_type = manifest.get("mediaType") or mediatypes.OCI_MANIFEST
        url = f"{self._repo_url(target)}/manifests/{target.tag}"
        with self._deadline(target, f"the upload of the manifest of '{target}'"):
            response = self._send(
                target,
                "PUT",
                url,
                scope=self._scope(target, push=True),
                headers={"Content-Type": str(media_type)},
                body=lambda: data,
            )
            with response:
                self._check(response, f"manifest of '{target}'", target, "push")
                returned = response.headers.get("Docker-Content-Digest", digest)
                discard_body(response)
        if response.status_code != 201 or returned != digest:
            raise RegistryError(
                f"registry '{target.registry}' stored the manifest of '{target}' as "
                f"'{returned}' (HTTP {response.status_code}) instead of '{digest}'",
                details={"expected": digest, "actual": returned},
            )
        reporter.success("Model pushed successfully")
        log.info("model pushed target=%s digest=%s", target, digest)
        return digest

    def _push_blob(
        self,
        target: ModelRef,
        blob: Descriptor,
        opener: Callable[[], IO[bytes]],
        reporter: ProgressReporter | None,
        cancel: threading.Event,
        mount_from: str | None = None,
    ) -> bool:
        """Upload one blob unless the repository has it; return whether bytes were sent.

        With ``mount_from`` (a repository of the same registry) the registry is first asked
        to mount the blob from there (:mod:`~orchestrator.registry.mount`).
        """
        check_cancel(cancel)
        scope = self._scope(target, push=True)
        base = self._repo_url(target)
        with self._deadline(target, f"the upload of blob '{blob.digest}'"):
            # HEAD first: it skips present blobs and takes the auth challenge before any body.
            response = self._send(target, "HEAD", f"{base}/blobs/{blob.digest}", scope=scope)
            with response:
                discard_body(response)
                if response.status_code == 200:
                    if reporter is not None:
                        reporter.update(blob.digest, blob.size, blob.size)
                    return False
                if response.status_code != 404:
                    self._check(response, f"blob '{blob.digest}'", target, "push")
            mounted_or_url = (
                self._mount(target, blob, base, mount_from, scope) if mount_from else None
            )
            if mounted_or_url is True:
                if reporter is not None:
                    reporter.update(blob.digest, blob.size, blob.size)
                return False
            upload_url = mounted_or_url or self._open_upload(
                target, blob, f"{base}/blobs/uploads/", scope
            )
        self._upload(target, blob, opener, upload_url, scope, reporter, cancel)
        return True

    def _mount(
        self, target: ModelRef, blob: Descriptor, base: str, source: str, scope: str
    ) -> str | bool | None:
        """Ask the registry to mount ``blob`` from repository ``source`` of the same registry.

        Returns:
            ``True`` when it mounted it (201); the upload URL when it opened an ordinary
            upload instead (202, as the spec allows); ``None`` when it refused (the caller
            then opens an upload itself: a mount is only ever a shortcut).
        """
        url = f"{base}/blobs/uploads/?mount={blob.digest}&from={quote(source, safe='/')}"
        mount_scope = f"{scope} repository:{source}:pull"
        response = self._send(
            target, "POST", url, scope=mount_scope, headers={"Content-Length": "0"}
        )
        with response:
            location = response.headers.get("Location")
            discard_body(response)
        if response.status_code == 201:
            log.info("blob mounted target=%s digest=%s from=%s", target, blob.digest, source)
            return True
        if response.status_code != 202 or not location:
            log.info(
                "blob mount refused target=%s digest=%s from=%s status=%d",
                target, blob.digest, source, response.status_code,
            )  # fmt: skip
            return None
        upload_url = urljoin(url, location)
        check_next_url(url, upload_url, f"the upload location of registry '{target.registry}'")
        return with_digest(upload_url, blob.digest)

    def _open_upload(self, target: ModelRef, blob: Descriptor, url: str, scope: str) -> str:
        """``POST`` an upload session; return the URL to ``PUT`` the blob to (with its digest).

        The ``Location`` may be relative (resolved against the request URL) or on another
        origin: ``_send`` then sends it no ``Authorization``. From https it must stay https.
        """
        response = self._send(target, "POST", url, scope=scope, headers={"Content-Length": "0"})
        with response:
            self._check(response, f"upload of blob '{blob.digest}'", target, "push")
            location = response.headers.get("Location")
            discard_body(response)
        if response.status_code != 202 or not location:
            raise RegistryError(
                f"registry '{target.registry}' did not open an upload for blob "
                f"'{blob.digest}' (HTTP {response.status_code}); try again later"
            )
        upload_url = urljoin(url, location)
        check_next_url(url, upload_url, f"the upload location of registry '{target.registry}'")
        return with_digest(upload_url, blob.digest)

    def _upload(
        self,
        target: ModelRef,
        blob: Descriptor,
        opener: Callable[[], IO[bytes]],
        upload_url: str,
        scope: str,
        reporter: ProgressReporter | None,
        cancel: threading.Event,
    ) -> None:
        """Send the blob in one streamed ``PUT`` under the stall rule, then await the answer."""
        watch = self._stall_watch(
            target, f"the upload of blob '{blob.digest}'", "push again (stored blobs are skipped)"
        )

        def on_bytes(done: int) -> None:
            watch.progress(done)
            if done >= blob.size and watch.stall is not None:
                watch.answer_within(self.deadline_seconds + blob.size / _STORE_BYTES_PER_SECOND)
            check_cancel(cancel)
            if reporter is not None:
                reporter.update(blob.digest, blob.size, min(done, blob.size))

        def body() -> CountingReader:
            watch.transfer_again()  # a body re-sent after a 401 is a transfer again
            return CountingReader(opener(), blob.size, on_bytes)

        with watch:
            response = self._send(
                target,
                "PUT",
                upload_url,
                scope=scope,
                headers={"Content-Type": "application/octet-stream"},
                body=body,
            )
            with response:
                self._check(response, f"upload of blob '{blob.digest}'", target, "push")
                returned = response.headers.get("Docker-Content-Digest", blob.digest)
                discard_body(response)
        if response.status_code != 201 or returned != blob.digest:
            raise RegistryError(
                f"registry '{target.registry}' stored blob '{blob.digest}' as '{returned}' "
                f"(HTTP {response.status_code}); the local file may have changed, try again",
                details={"expected": blob.digest, "actual": returned},
            )


def _tags_for(ref: ModelRef) -> list[str]:
    """Return the tags a pull of ``ref`` sets: none for a bare ``name@digest`` reference.

    A digest pins content, not a name, so it must not move ``:latest`` away from another model.
    """
    name = (ref.original or str(ref)).split("@", 1)[0]
    explicit_tag = ":" in name.rsplit("/", 1)[-1]
    return [ref.tag_string] if explicit_tag or ref.digest is None else []


def _stored_manifest(store: Store, record: ModelRecord) -> bytes:
    """Return the raw manifest bytes of ``record``, checked against its ID."""
    data = record.manifest_bytes or store.read_manifest(record.id)
    if "sha256:" + hashlib.sha256(data).hexdigest() != record.id:
        raise RegistryError(
            f"the stored manifest of '{record.id}' does not hash to its ID; the store is "
            f"corrupt, pull or package the model again"
        )
    return bytes(data)
