"""Streaming, resumable, verified downloads shared by the OCI and Hugging Face clients.

A download goes to a partial file (the store's ``<hex>.incomplete``, or a staging file for Hugging
Face) in 1 MiB chunks, hashing as it reads, so memory does not grow with the model. A partial file
left by an earlier attempt is re-hashed and continued with ``Range: bytes=N-``; only a ``206``
whose ``Content-Range`` starts at ``N`` continues it, a ``200`` starts again from 0 (DMR's rules;
Debian's ``docker-registry`` 2.8 answers ``Range`` on blobs). Redirects are followed here so the
``Range`` header survives them and ``Authorization`` never leaves the origin that asked for it.

Credentials stay with their origin (scheme, host and port, :func:`origin`): a hop to another
origin goes without ``Authorization``, and a hop from ``https`` to anything else is refused
(:func:`check_next_url`), since a downgrade would hand the transfer to anyone on the path. A body
longer than its descriptor's size is cut after the first chunk past it and refused; a body that
ends early keeps its partial file so the next pull resumes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, BinaryIO
from urllib.parse import quote, urljoin, urlsplit

import requests
import requests.auth

from orchestrator import __version__
from orchestrator.errors import DigestMismatchError, RegistryError
from orchestrator.registry.watchdog import WatchedAdapter

CHUNK_BYTES = 1024 * 1024
# Blob bodies are read in pieces this small so the stall rule (watchdog.py) sees steady progress
# on a slow link: urllib3 returns a piece only once all of it has arrived.
READ_BYTES = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 10
USER_AGENT = f"model-runner-python/{__version__} (model-distribution)"

# fetch(url, headers) sends one GET to the origin (with its authorization), stream=True,
# allow_redirects=False; check(response, what) raises the right error for a failed status.
Fetch = Callable[[str, Mapping[str, str]], requests.Response]
Check = Callable[[requests.Response, str], None]

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def describe_failure(ex: BaseException) -> str:
    """Return a short reason for a failed request (the full text belongs in ``details``)."""
    if isinstance(ex, requests.exceptions.SSLError):
        return "TLS handshake failed"
    if isinstance(ex, requests.exceptions.ConnectTimeout):
        return "connection timed out"
    if isinstance(ex, requests.Timeout):
        return "no answer before the read timeout"
    if isinstance(ex, requests.exceptions.ChunkedEncodingError):
        return "the connection broke mid-transfer"
    if isinstance(ex, requests.ConnectionError):
        return "connection failed"
    if isinstance(ex, OSError):
        return ex.strerror or type(ex).__name__
    return type(ex).__name__


def new_session(pool_size: int = 8) -> requests.Session:
    """Return a session with our User-Agent and a pool large enough for parallel layers."""
    session = requests.Session()
    # Watched connections: a Watch (watchdog.py) can cut a transfer that is too slow.
    adapter = WatchedAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    # Never ~/.netrc: requests would replace our Authorization with its entry, and Debian 12's
    # requests 2.28 leaks it on crafted URLs (CVE-2024-47081). trust_env stays on for the proxy
    # and CA-bundle variables the service's environment file documents.
    session.auth = _NoNetrc()
    return session


class _NoNetrc(requests.auth.AuthBase):
    """Session auth that changes nothing: with any ``auth`` set, requests skips ``.netrc``."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def origin(url: str) -> tuple[str, str, int | None]:
    """Return the origin of ``url``: scheme, lowercased host and port (the default filled in).

    User info is ignored (``http://u@h/`` is ``h``'s origin); an unparsable port gives ``None``.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def same_origin(url: str, other: str) -> bool:
    """Return whether two URLs share scheme, host and port (only then may credentials follow)."""
    return origin(url) == origin(other)


def check_next_url(current: str, following: str, what: str) -> None:
    """Refuse to go from ``current`` to ``following`` (a redirect, a ``Location``, a ``Link``).

    Only ``http`` and ``https`` are followed, and never from ``https`` down to ``http``.

    Raises:
        RegistryError: The next URL is not http(s), or a downgrade.
    """
    scheme = urlsplit(following).scheme.lower()
    if scheme not in ("http", "https") or not urlsplit(following).hostname:
        raise RegistryError(
            f"{what} pointed to {following!r}, which is not an http(s) URL; refusing to follow it",
            details={"from": current, "to": following},
        )
    if urlsplit(current).scheme.lower() == "https" and scheme != "https":
        raise RegistryError(
            f"{what} pointed from https to plain http ({following!r}); refusing the downgrade, "
            f"the server or something on the path is misbehaving",
            details={"from": current, "to": following},
        )


def open_following_redirects(
    fetch: Fetch,
    session: requests.Session,
    url: str,
    headers: Mapping[str, str],
    *,
    timeout: tuple[float, float],
) -> requests.Response:
    """GET ``url`` with ``headers`` and follow up to 10 redirects.

    Every hop keeps ``headers`` (``Range`` above all). Hops on the first URL's origin go through
    ``fetch`` (authorized); hops elsewhere, typically a CDN with a signed URL, go without
    ``Authorization``. A hop from https to http is refused.

    Raises:
        RegistryError: Too many redirects, a downgrade, or the other origin is unreachable.
    """
    first = url
    response = fetch(url, headers)
    for _ in range(MAX_REDIRECTS):
        if response.status_code not in (301, 302, 303, 307, 308):
            return response
        location = response.headers.get("Location")
        response.close()
        if not location:
            raise RegistryError(f"'{url}' redirected without a Location; try again later")
        following = urljoin(url, location)
        check_next_url(url, following, f"a redirect from '{url}'")
        url = following
        if same_origin(url, first):
            response = fetch(url, headers)
        else:
            try:
                response = session.get(
                    url,
                    headers=dict(headers),
                    stream=True,
                    allow_redirects=False,
                    timeout=timeout,
                )
            except requests.RequestException as ex:
                raise RegistryError(
                    f"could not download from '{urlsplit(url).netloc}' "
                    f"({describe_failure(ex)}); try again later",
                    details={"url": url, "error": str(ex)},
                ) from ex
    response.close()
    raise RegistryError(f"more than {MAX_REDIRECTS} redirects for '{url}'; try again later")


def _hash_file(path: Path, hasher: hashlib._Hash) -> int:
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            hasher.update(chunk)
            size += len(chunk)
    return size


def _resume_start(response: requests.Response, offset: int) -> bool:
    """Return whether ``response`` continues a partial file at ``offset``."""
    if response.status_code != 206:
        return False
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return match is not None and int(match.group(1)) == offset


def download_to_file(
    fetch: Fetch,
    session: requests.Session,
    url: str,
    partial: Path,
    *,
    what: str,
    size: int | None,
    sha256_hex: str | None,
    check: Check,
    timeout: tuple[float, float],
    on_bytes: Callable[[int], None] | None = None,
) -> str:
    """Download ``url`` into ``partial`` (continuing it if present); return the sha256 hex.

    Args:
        fetch: Sends one authorized GET to the URL's origin.
        session: Session for redirect hops to other origins.
        url: What to download.
        partial: The partial file; left in place when the connection breaks, so a later call
            resumes; deleted when the content is proven wrong.
        what: Name of the thing for messages (``blob 'sha256:…'``, ``file 'x.gguf'``).
        size: Expected size, when known.
        sha256_hex: Expected sha256, when known.
        check: Raises the right error for a failed status.
        timeout: (connect, read) timeout of each request.
        on_bytes: Called with the bytes held so far, after each chunk.

    Raises:
        DigestMismatchError: The bytes do not match ``size`` or ``sha256_hex``.
        RegistryError: The connection failed or broke (the partial file is kept).
    """
    hasher = hashlib.sha256()
    offset = partial.stat().st_size if partial.exists() else 0
    if size is not None and offset > size:
        offset = 0
    if offset and _hash_file(partial, hasher) != offset:
        hasher, offset = hashlib.sha256(), 0  # it changed under us: start again
    if not offset:
        partial.write_bytes(b"")
    if on_bytes is not None and offset:
        on_bytes(offset)
    if size is None or offset != size:
        hasher, written = _stream(
            fetch,
            session,
            url,
            partial,
            hasher,
            offset,
            what=what,
            size=size,
            check=check,
            timeout=timeout,
            on_bytes=on_bytes,
        )
    else:
        written = offset
    if size is not None and written < size:
        # Short is not proven wrong: the connection ended early. Keep the partial file so the
        # next pull resumes it; the digest is checked once all bytes are there.
        raise RegistryError(
            f"the download of {what} ended after {written} of {size} bytes; pull again to "
            f"resume it",
            details={"url": url, "received": written, "expected_size": size},
        )
    digest = hasher.hexdigest()
    if (size is not None and written != size) or (sha256_hex and digest != sha256_hex):
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        got = (
            f"more than the {size} bytes announced"
            if size is not None and written > size
            else f"{written} bytes with sha256 '{digest}'"
        )
        raise DigestMismatchError(
            f"{what} does not match its digest or size (got {got}); the server sent corrupt "
            f"data and nothing was stored, try again later",
            details={
                "url": url,
                "size": written,
                "sha256": digest,
                "expected_size": size,
                "expected_sha256": sha256_hex,
            },
        )
    return digest


def _stream(
    fetch: Fetch,
    session: requests.Session,
    url: str,
    partial: Path,
    hasher: hashlib._Hash,
    offset: int,
    *,
    what: str,
    size: int | None,
    check: Check,
    timeout: tuple[float, float],
    on_bytes: Callable[[int], None] | None,
) -> tuple[hashlib._Hash, int]:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    response = open_following_redirects(fetch, session, url, headers, timeout=timeout)
    if offset and not _resume_start(response, offset):
        # 200 (Range ignored), 416 or a 206 at another start: begin again from 0.
        restart_plain = response.status_code != 200
        if restart_plain:
            response.close()
            response = open_following_redirects(fetch, session, url, {}, timeout=timeout)
        hasher = hashlib.sha256()
        offset = 0
        partial.write_bytes(b"")
    with response:
        check(response, what)
        if response.status_code not in (200, 206):
            raise RegistryError(
                f"downloading {what} got HTTP {response.status_code}; try again later",
                details={"status": response.status_code, "url": url},
            )
        written = offset
        try:
            with open(partial, "ab") as out:
                for chunk in response.iter_content(READ_BYTES):
                    written += len(chunk)
                    if size is not None and written > size:
                        break  # more than announced: the caller reports the mismatch
                    hasher.update(chunk)
                    out.write(chunk)
                    if on_bytes is not None:
                        on_bytes(written)
        except (requests.RequestException, OSError) as ex:
            if isinstance(ex, OSError) and ex.errno == errno.ENOSPC:
                raise RegistryError(
                    f"no space left on the device while downloading {what}; free some disk "
                    f"space and pull again (the download resumes)"
                ) from ex
            raise RegistryError(
                f"the download of {what} broke off after {written} bytes "
                f"({describe_failure(ex)}); pull again to "
                f"resume it",
                details={"url": url, "received": written, "error": str(ex)},
            ) from ex
    return hasher, written


class CountingReader:
    """Upload body over a file: ``requests`` streams it, ``__len__`` sets Content-Length.

    Each ``read`` reports the bytes sent so far to ``on_bytes`` (progress, cancellation).
    """

    def __init__(self, handle: IO[bytes], size: int, on_bytes: Callable[[int], None]) -> None:
        self._handle = handle
        self._size = size
        self._sent = 0
        self._on_bytes = on_bytes

    def __len__(self) -> int:
        return self._size

    def read(self, amount: int = -1) -> bytes:
        """Read the next block (at most 1 MiB when no size is given)."""
        data = self._handle.read(amount if amount and amount > 0 else CHUNK_BYTES)
        self._sent += len(data)
        self._on_bytes(self._sent)
        return data

    def close(self) -> None:
        """Close the underlying file."""
        self._handle.close()


def file_opener(path: Path) -> Callable[[], IO[bytes]]:
    """Return a function that opens ``path`` for an upload (again after an auth challenge)."""

    def opener() -> IO[bytes]:
        try:
            return open(path, "rb")  # noqa: SIM115 (the upload body closes it)
        except OSError as ex:
            raise RegistryError(
                f"could not read '{path}' for the push ({describe_failure(ex)}); check the file"
            ) from ex

    return opener


def with_digest(url: str, digest: str) -> str:
    """Append ``digest=<digest>`` to an upload URL, keeping its own query as it is."""
    separator = "&" if urlsplit(url).query else "?"
    return f"{url}{separator}digest={quote(digest, safe='')}"


def run_parallel(
    max_workers: int,
    jobs: Sequence[Callable[[], object]],
    cancel: threading.Event | None = None,
) -> None:
    """Run ``jobs`` on a thread pool; after all have ended, raise the first failure.

    Once one job fails, ``cancel`` is set: jobs not started yet are skipped, and running jobs
    that poll :func:`check_cancel` stop at their next chunk instead of finishing. The
    error raised is the first real failure, never a cancellation.
    """
    if not jobs:
        return
    cancel = cancel if cancel is not None else threading.Event()
    errors: list[BaseException] = []

    def guarded(job: Callable[[], object]) -> None:
        if cancel.is_set():
            return
        try:
            job()
        except BaseException as ex:  # noqa: BLE001 (re-raised in the calling thread)
            cancel.set()
            errors.append(ex)

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(jobs)))) as pool:
        for job in jobs:
            pool.submit(guarded, job)
    if errors:
        # The first failure explains the others (they are cancellations or consequences).
        errors.sort(key=_is_cancellation)
        raise errors[0]


def _is_cancellation(ex: BaseException) -> bool:
    return isinstance(ex, RegistryError) and ex.details.get("cancelled") is True


def check_cancel(cancel: threading.Event) -> None:
    """Raise a cancellation ``RegistryError`` when ``cancel`` is set (partial files are kept)."""
    if cancel.is_set():
        raise RegistryError(
            "the transfer was cancelled because another one failed; try again",
            details={"cancelled": True},
        )


@contextlib.contextmanager
def exclusive_partial(path: Path, *, stall_seconds: float) -> Iterator[BinaryIO]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) while downloading into it.

    Another thread or process downloading the same file holds the lock; we wait while that file
    keeps growing and give up when it stalls for ``stall_seconds``. After the wait the caller must
    check whether the other download already finished (the file may have been renamed away).

    Raises:
        RegistryError: The other download made no progress for ``stall_seconds``.
    """
    while True:
        handle = open(path, "ab")  # noqa: SIM115 (closed below or by the caller's exit)
        last_size, deadline = -1, time.monotonic() + stall_seconds
        try:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    size = os.fstat(handle.fileno()).st_size
                    if size != last_size:
                        last_size, deadline = size, time.monotonic() + stall_seconds
                    elif time.monotonic() >= deadline:
                        raise RegistryError(
                            f"another download of '{path.name}' made no progress for "
                            f"{stall_seconds:.0f}s; try again later"
                        ) from None
                    time.sleep(0.2)
            try:
                same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            handle.close()
            raise
        if not same:
            # The holder renamed or deleted the file; lock whatever is at the path now.
            handle.close()
            continue
        try:
            yield handle
        finally:
            # An empty partial file is only our lock; don't leave it behind.
            with contextlib.suppress(OSError):
                if os.fstat(handle.fileno()).st_size == 0 and (
                    os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
                ):
                    path.unlink()
            handle.close()
        return
