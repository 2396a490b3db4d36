"""HTTP client of the daemon for ``docker model`` (``requests``, TCP or Unix socket).

The base URL comes from ``MODEL_RUNNER_HOST`` (DMR's variable; default
``http://localhost:12434``, scheme added when missing). ``unix:///run/x.sock`` talks HTTP over
a Unix socket through :class:`UnixSocketAdapter`. Every failure becomes an
:class:`~orchestrator.errors.OrchestratorError`: the daemon's JSON error (``{"error": {...}}``)
is rebuilt as the class its ``code`` names, and a daemon that cannot be reached becomes one
:class:`~orchestrator.errors.ServiceUnavailableError` that says how to start it.
"""

from __future__ import annotations

import html
import json
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from orchestrator import __version__, errors
from orchestrator.unixhttp import connect_unix_socket

DEFAULT_HOST = "http://localhost:12434"
USER_AGENT = f"docker-model-cli/{__version__}"
CONNECT_TIMEOUT_SECONDS = 5.0
# NOTE: read timeouts bound the silence between two chunks, not the whole call.
READ_TIMEOUT_SECONDS = 60.0
STREAM_READ_TIMEOUT_SECONDS = 900.0
START_HINT = (
    "start it with 'sudo systemctl start docker-model-runner' (or run 'model-runner' in a "
    "terminal), or point MODEL_RUNNER_HOST at the address it listens on"
)

_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


def base_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """Return the daemon's base URL: ``MODEL_RUNNER_HOST`` with a scheme, no trailing slash."""
    env = os.environ if environ is None else environ
    raw = env.get("MODEL_RUNNER_HOST", "").strip() or DEFAULT_HOST
    if raw.startswith("unix://"):
        return raw
    if raw.startswith("/"):
        return "unix://" + raw
    if "://" not in raw:
        raw = "http://" + raw
    return raw.rstrip("/")


class _UnixHTTPConnection(HTTPConnection):
    """An urllib3 connection whose socket is a Unix stream socket.

    ``requests`` pools urllib3 connections, so this cannot be
    :class:`orchestrator.unixhttp.UnixHTTPConnection`; it opens its socket the same way.
    """

    def __init__(self, *args: Any, socket_path: str, **kwargs: Any) -> None:
        self._socket_path = socket_path
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        # urllib3 may hand over its "default" sentinel instead of seconds: that means the
        # socket module's default timeout, as a fresh socket gets it.
        timeout = (
            self.timeout if isinstance(self.timeout, (int, float)) else socket.getdefaulttimeout()
        )
        try:
            return connect_unix_socket(self._socket_path, timeout)
        except OSError as ex:
            raise NewConnectionError(self, f"cannot connect to {self._socket_path}: {ex}") from ex


class _UnixConnectionPool(HTTPConnectionPool):
    ConnectionCls = _UnixHTTPConnection


class UnixSocketAdapter(HTTPAdapter):
    """A ``requests`` transport adapter that sends every request to one Unix socket.

    Args:
        socket_path: Filesystem path of the daemon's socket.
    """

    def __init__(self, socket_path: str) -> None:
        self._socket_path = socket_path
        self._pool = _UnixConnectionPool("localhost", maxsize=4, socket_path=socket_path)
        super().__init__()

    # requests < 2.32 asks get_connection(); newer versions get_connection_with_tls_context().
    def get_connection(self, url: Any, proxies: Any = None) -> _UnixConnectionPool:
        """Return the pool of the socket (the URL's host is ignored)."""
        return self._pool

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> _UnixConnectionPool:
        """Return the pool of the socket (no TLS over a Unix socket)."""
        return self._pool

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.close()
        super().close()


def _error_classes_by_code() -> dict[str, type[errors.OrchestratorError]]:
    found: dict[str, type[errors.OrchestratorError]] = {}
    pending: list[type[errors.OrchestratorError]] = [errors.OrchestratorError]
    while pending:
        cls = pending.pop(0)
        # First come wins: ModelNotFoundError is found before RemoteNotFoundError.
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


_BY_STATUS: dict[int, type[errors.OrchestratorError]] = {
    400: errors.InvalidRequestError,
    401: errors.AuthenticationError,
    403: errors.OriginNotAllowedError,
    404: errors.NotFoundError,
    405: errors.MethodNotAllowedError,
    409: errors.ConflictError,
    413: errors.RequestTooLargeError,
    422: errors.UnsupportedModelError,
    501: errors.NotSupportedError,
    502: errors.RegistryError,
    503: errors.ServiceUnavailableError,
    504: errors.RunnerTimeoutError,
    507: errors.InsufficientMemoryError,
}


def error_from_body(status: int, body: bytes | str) -> errors.OrchestratorError:
    """Rebuild the error the daemon answered with from its status and body.

    The body is our JSON shape ``{"error": {"message", "type", "param", "code"}}``, an
    Ollama-style ``{"error": "text"}``, llama-server's ``{"error": {"code": 400, ...}}`` or
    DMR's plain text; the message is kept verbatim.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    message = text.strip()
    code: object = None
    param = None
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        error = document.get("error", document)
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            code = error.get("code")
            param = error.get("param") if isinstance(error.get("param"), str) else None
        elif isinstance(error, str):
            message = error
    cls = _error_classes_by_code().get(code) if isinstance(code, str) else None
    if cls is None or (cls.status != status and status in _BY_STATUS):
        cls = _BY_STATUS.get(status, errors.OrchestratorError)
    if not message:
        message = (
            f"the daemon answered HTTP {status} without an explanation; see 'docker model logs'"
        )
    return cls(message, param=param, details={"status": status})


def model_path(model: str, suffix: str = "") -> str:
    """Return ``/models/<ref>[/<suffix>]`` with the reference quoted for a URL path."""
    path = "/models/" + quote(model.strip(), safe="/:@")
    return f"{path}/{suffix}" if suffix else path


_TRUE = frozenset({"1", "true", "yes", "on"})


class DaemonClient:
    """Talk to the daemon's HTTP API.

    Args:
        base_url: ``http://host:port``, ``https://...`` or ``unix:///path.sock``; default from
            ``MODEL_RUNNER_HOST``.
        tls_verify: Certificate check of a selected context (``True``, ``False``, CA path);
            ``None``: the TLS variables decide.
    """

    def __init__(
        self, base_url: str | None = None, *, tls_verify: bool | str | None = None
    ) -> None:
        self.base_url = base_url or base_url_from_env()
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        # The daemon's optional key (DMR_API_KEY); this session only ever talks to base_url.
        api_key = os.environ.get("DMR_API_KEY", "").strip()
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        if self.base_url.startswith("unix://"):
            self._socket_path: str | None = self.base_url[len("unix://") :]
            self._http_base = "http+unix://localhost"
            self._session.mount("http+unix://", UnixSocketAdapter(self._socket_path))
            self._session.trust_env = False
        else:
            self._socket_path = None
            self._http_base = self.base_url
            # Like Go's net/http, never send loopback traffic through an HTTP proxy.
            if (urlsplit(self.base_url).hostname or "") in _LOOPBACK:
                self._session.trust_env = False
            # DMR's CLI variables for a TLS listener with its own CA (or none checked).
            ca_cert = os.environ.get("MODEL_RUNNER_TLS_CA_CERT", "").strip()
            if ca_cert:
                self._session.verify = ca_cert
            elif os.environ.get("MODEL_RUNNER_TLS_SKIP_VERIFY", "").strip().lower() in _TRUE:
                self._session.verify = False
            if tls_verify is not None:
                self._session.verify = tls_verify

    @property
    def endpoint(self) -> str:
        """Return the base URL as shown to users (``http://localhost:12434``)."""
        return self.base_url

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

    def _unreachable(self, ex: Exception) -> errors.ServiceUnavailableError:
        return errors.ServiceUnavailableError(
            f"cannot connect to Docker Model Runner at {self.base_url}; {START_HINT}",
            details={"cause": str(ex)},
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        data: bytes | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> requests.Response:
        """Send one request; return the response when its status is below 400.

        Raises:
            ServiceUnavailableError: The daemon cannot be reached or stopped answering.
            OrchestratorError: The daemon answered with an error (the class its code names).
        """
        timeout = (
            CONNECT_TIMEOUT_SECONDS,
            read_timeout or (STREAM_READ_TIMEOUT_SECONDS if stream else READ_TIMEOUT_SECONDS),
        )
        try:
            response = self._session.request(
                method,
                self._http_base + path,
                json=json_body,
                params=params,
                data=data,
                headers=dict(headers or {}),
                stream=stream,
                timeout=timeout,
            )
        except requests.ConnectionError as ex:
            if _is_connect_failure(ex):
                raise self._unreachable(ex) from ex
            raise errors.ServiceUnavailableError(
                f"the connection to Docker Model Runner at {self.base_url} broke; "
                f"check 'docker model logs' and try again"
            ) from ex
        except requests.Timeout as ex:
            raise errors.ServiceUnavailableError(
                f"Docker Model Runner at {self.base_url} did not answer within "
                f"{timeout[1]:.0f} s; check 'docker model logs'"
            ) from ex
        except requests.RequestException as ex:
            raise errors.OrchestratorError(
                f"the request to Docker Model Runner failed: {ex}; check MODEL_RUNNER_HOST"
            ) from ex
        if response.status_code >= 400:
            try:
                body = response.content
            except requests.RequestException:
                body = b""
            finally:
                response.close()
            raise error_from_body(response.status_code, body)
        return response

    def get_json(self, path: str, *, params: Mapping[str, str] | None = None) -> Any:
        """GET ``path`` and return its decoded JSON."""
        return _decode(self.request("GET", path, params=params))

    def post_json(
        self,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> Any:
        """POST a JSON body; return the decoded JSON answer (``None`` when empty)."""
        response = self.request(
            "POST", path, json_body=body, params=params, headers=headers, read_timeout=read_timeout
        )
        return _decode(response)

    def iter_chunks(self, response: requests.Response) -> Iterator[bytes]:
        """Yield the body of a streamed response as it arrives; close it at the end."""
        try:
            # NOTE: chunk_size=None yields each HTTP chunk as soon as it arrives.
            yield from response.iter_content(chunk_size=None)
        except requests.RequestException as ex:
            raise errors.ServiceUnavailableError(
                f"the stream from Docker Model Runner at {self.base_url} broke off; "
                f"check 'docker model logs' and run the command again"
            ) from ex
        finally:
            response.close()

    def iter_lines(self, response: requests.Response) -> Iterator[str]:
        """Yield the decoded lines of a streamed response; close it at the end."""
        pending = b""
        for chunk in self.iter_chunks(response):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if pending:
            yield pending.rstrip(b"\r").decode("utf-8", "replace")


def _is_connect_failure(ex: requests.ConnectionError) -> bool:
    # requests wraps urllib3's MaxRetryError whose reason says whether the connect failed.
    if isinstance(ex, requests.ConnectTimeout):
        return True
    cause = ex.args[0] if ex.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


def _decode(response: requests.Response) -> Any:
    try:
        content = response.content
    except requests.RequestException as ex:
        raise errors.ServiceUnavailableError(
            "the answer of Docker Model Runner broke off; run the command again"
        ) from ex
    if not content.strip():
        return None
    try:
        return json.loads(content)
    except ValueError as ex:
        raise errors.OrchestratorError(
            f"Docker Model Runner answered with something that is not JSON: {content[:80]!r}; "
            f"check that MODEL_RUNNER_HOST points at it"
        ) from ex


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """Decode one progress line; HTML-escaped lines (no ``Accept: application/json``) too."""
    text = line.strip()
    if not text:
        return None
    for candidate in (text, html.unescape(text)):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    # NOTE: after a failure the daemon may add the bare error text after the error line.
    return {"type": "text", "message": html.unescape(text)}
