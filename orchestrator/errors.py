"""The one exception hierarchy of the daemon and the CLI.

Every error the product reports derives from :class:`OrchestratorError`. Each subclass pins the
HTTP status, the OpenAI ``type`` and a stable, documented ``code``; ``api/error_handlers.py`` is
the only place that renders them, as ``{"error": {"message", "type", "param", "code"}}``.

This module imports nothing from the rest of the package, so every module may import it.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class for every error the daemon reports.

    Attributes:
        status: HTTP status the API answers with.
        type: OpenAI error ``type`` (OpenAI's word where it has one, else llama-server's).
        code: Stable snake_case code clients may key on (documented in README).
        message: One sentence for the user: what happened and what to do.
        param: Request field the error is about, if any.
        details: Evidence for logs and the CLI (exit status, log tail, registry errors);
            never sent in an HTTP body.
        retry_after: Seconds after which a retry may succeed; the API sends it as
            ``Retry-After`` (429 and 503 refusals). ``None``: no such advice.
    """

    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        details: dict[str, object] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details or {}
        self.retry_after: int | None = max(int(retry_after), 1) if retry_after is not None else None

    def to_dict(self) -> dict[str, object]:
        """Return the OpenAI-shaped error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(OrchestratorError):
    """The request body or a parameter is unreadable, missing or of the wrong type."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ClientTimeoutError(OrchestratorError):
    """The client stopped sending its request (a body read in a thread) for the client timeout."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class InvalidReferenceError(InvalidRequestError):
    """A model reference is not a valid name, tag, digest or ID."""

    code = "invalid_reference"


class RequestTooLargeError(OrchestratorError):
    """The request body exceeds the size limit."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class AuthenticationError(OrchestratorError):
    """A bearer token is configured and the request's is wrong or missing."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class OriginNotAllowedError(OrchestratorError):
    """The request's Origin is not in the CORS allow-list."""

    status = 403
    type = "permission_error"
    code = "origin_not_allowed"


class HostNotAllowedError(OrchestratorError):
    """The request names the daemon by a host name it does not answer to (DNS rebinding)."""

    status = 403
    type = "permission_error"
    code = "host_not_allowed"


class ModelNotFoundError(OrchestratorError):
    """The reference is not in the local store (OpenAI's own pairing of 404 and type)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFoundError(OrchestratorError):
    """Another resource is missing: a route, a tag, a blob, a runner."""

    status = 404
    type = "not_found_error"
    code = "not_found"


class MethodNotAllowedError(OrchestratorError):
    """The route exists but does not answer this HTTP method."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ConflictError(OrchestratorError):
    """The operation conflicts with the current state (e.g. delete with several tags)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class UnsupportedModelError(OrchestratorError):
    """The artifact's config media type or format is one this runner cannot use."""

    status = 422
    type = "invalid_request_error"
    code = "unsupported_model"


class InvalidModelFileError(OrchestratorError):
    """A file given to package is not a readable GGUF file."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_model_file"


class NotSupportedError(OrchestratorError):
    """The mode or feature is one the engine cannot do."""

    status = 501
    type = "not_supported_error"
    code = "not_supported"


class InsufficientMemoryError(OrchestratorError):
    """The model does not fit in memory even after evicting idle runners."""

    status = 507
    type = "unavailable_error"
    code = "insufficient_memory"


class ServiceUnavailableError(OrchestratorError):
    """The daemon is shutting down or cannot take the request right now."""

    status = 503
    type = "unavailable_error"
    code = "unavailable"


class EngineNotFoundError(OrchestratorError):
    """No llama-server binary was found in any of the places searched."""

    status = 503
    type = "unavailable_error"
    code = "engine_not_found"


class RunnerStartError(OrchestratorError):
    """llama-server exited while loading (exit status and log tail in details)."""

    status = 500
    type = "server_error"
    code = "runner_start_failed"


class EngineCrashedError(RunnerStartError):
    """llama-server died by SIGILL, SIGBUS or SIGSEGV while loading (see runners/crashes.py)."""

    code = "engine_crashed"


class RunnerTimeoutError(OrchestratorError):
    """llama-server was not ready before the load deadline."""

    status = 504
    type = "server_error"
    code = "runner_start_timeout"


class RunnerCrashedError(OrchestratorError):
    """The runner died or closed the connection mid-request."""

    status = 502
    type = "server_error"
    code = "runner_crashed"


class RegistryError(OrchestratorError):
    """The registry is unreachable or answered with a server error."""

    status = 502
    type = "server_error"
    code = "registry_error"


class RegistryDeniedError(OrchestratorError):
    """The registry answered 401/403 for our credentials."""

    status = 401
    type = "authentication_error"
    code = "registry_denied"


class RemoteNotFoundError(OrchestratorError):
    """The registry (or Hugging Face) has no such repository, tag or file."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class DigestMismatchError(OrchestratorError):
    """Downloaded bytes do not hash to the digest they were asked for."""

    status = 502
    type = "server_error"
    code = "digest_mismatch"


class StoreError(OrchestratorError):
    """The local store is unreadable, corrupt or cannot be written."""

    status = 500
    type = "server_error"
    code = "store_error"


class ConfigError(OrchestratorError):
    """Bad configuration; reported at start-up or by the CLI with exit status 2."""

    status = 500
    type = "server_error"
    code = "config_error"


class MemoryBusyError(InsufficientMemoryError):
    """The model would fit, but runners with requests in flight hold the memory; retry later."""

    status = 503
    type = "unavailable_error"
    code = "insufficient_memory"


class TooManyRequestsError(OrchestratorError):
    """Too many requests already wait for this model's runner; retry after ``retry_after`` s.

    Always carries ``retry_after`` (1 s when not given).
    """

    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        details: dict[str, object] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, param=param, details=details, retry_after=retry_after or 1)


class EngineRejectedError(OrchestratorError):
    """The engine answered a translated request (Ollama, Responses) with an error status.

    The status is the engine's (a 400 for a prompt over the context, say); the message is its
    own words, so the client learns what to change. Raised only where a face must render the
    error in its own protocol's shape; the OpenAI routes pass the engine's body through.
    """

    status = 400
    type = "invalid_request_error"
    code = "engine_rejected"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type_: str | None = None,
        param: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message, param=param, details=details)
        self.status = status if 400 <= status <= 599 else 502
        if type_:
            self.type = type_
        elif self.status >= 500:
            self.type = "server_error"
