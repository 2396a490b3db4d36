"""Which daemon the CLI talks to: ``MODEL_RUNNER_HOST`` > the selected context > the default.

As in DMR's ``DetectContext``: the environment variable always wins; without it the selected
``docker model context`` supplies the host and its TLS settings, each of which the TLS variables
(``MODEL_RUNNER_TLS``, ``MODEL_RUNNER_TLS_SKIP_VERIFY``, ``MODEL_RUNNER_TLS_CA_CERT``) override
one by one when set; without either, ``http://localhost:12434``. A contexts file that cannot be
read is a warning, not a failure: the command still runs against the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from orchestrator.errors import OrchestratorError
from orchestrator.modelcli.context_store import DEFAULT_CONTEXT, ContextStore, ModelContext
from orchestrator.modelcli.daemon_client import DEFAULT_HOST, base_url_from_env

SOURCE_ENVIRONMENT = "environment"
SOURCE_CONTEXT = "context"
SOURCE_DEFAULT = "default"

_TLS = "MODEL_RUNNER_TLS"
_TLS_SKIP_VERIFY = "MODEL_RUNNER_TLS_SKIP_VERIFY"
_TLS_CA_CERT = "MODEL_RUNNER_TLS_CA_CERT"


@dataclass(frozen=True)
class Endpoint:
    """The daemon address one CLI invocation uses.

    Attributes:
        base_url: ``http://host:port``, ``https://...`` or ``unix:///path``.
        source: :data:`SOURCE_ENVIRONMENT`, :data:`SOURCE_CONTEXT` or :data:`SOURCE_DEFAULT`.
        context: Name of the context it came from (``default`` otherwise).
        tls_verify: What to check the daemon's certificate with (``True``, ``False`` or a CA
            bundle path); ``None`` leaves it to the TLS variables (the daemon client's rule).
    """

    base_url: str
    source: str
    context: str = DEFAULT_CONTEXT
    tls_verify: bool | str | None = None


def _with_https(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "http":
        return urlunsplit(parts._replace(scheme="https"))
    return url


def context_endpoint(name: str, context: ModelContext, environ: Mapping[str, str]) -> Endpoint:
    """Return the endpoint of a context, with any TLS variable that is set taking precedence."""
    use_tls = environ[_TLS].strip().lower() == "true" if _TLS in environ else context.tls.enabled
    skip_verify = (
        environ[_TLS_SKIP_VERIFY].strip().lower() == "true"
        if _TLS_SKIP_VERIFY in environ
        else context.tls.skip_verify
    )
    ca_cert = environ[_TLS_CA_CERT].strip() if _TLS_CA_CERT in environ else context.tls.ca_cert
    # DMR: TLS on turns an http:// host (or one without a scheme) into https://.
    base_url = base_url_from_env({"MODEL_RUNNER_HOST": context.host})
    if use_tls:
        base_url = _with_https(base_url)
    verify: bool | str = ca_cert if ca_cert else not skip_verify
    return Endpoint(base_url=base_url, source=SOURCE_CONTEXT, context=name, tls_verify=verify)


def resolve_endpoint(
    environ: Mapping[str, str],
    *,
    store: ContextStore | None = None,
    warn: Callable[[str], None] = lambda text: None,
) -> Endpoint:
    """Return the endpoint: ``MODEL_RUNNER_HOST``, else the selected context, else the default.

    Args:
        environ: The CLI's environment.
        store: The contexts store (default: the one ``DOCKER_CONFIG`` names).
        warn: Receives a ``Warning:`` line when the contexts file cannot be used.
    """
    if environ.get("MODEL_RUNNER_HOST", "").strip():
        return Endpoint(base_url=base_url_from_env(environ), source=SOURCE_ENVIRONMENT)
    contexts = store or ContextStore.for_environ(environ)
    try:
        name = contexts.active()
        if name != DEFAULT_CONTEXT:
            return context_endpoint(name, contexts.get(name), environ)
    except OrchestratorError as ex:
        warn(f"Warning: ignoring the selected model context: {ex.message}")
    return Endpoint(base_url=DEFAULT_HOST, source=SOURCE_DEFAULT)
