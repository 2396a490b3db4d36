"""Registry credentials and the ``WWW-Authenticate`` challenge flow.

Credentials come from Docker's ``config.json`` (``auths``, ``credHelpers``, ``credsStore``), as
``docker login`` leaves them. :class:`Authenticator` answers the two challenge schemes an OCI
registry uses (``docs/dmr-spec.md`` section 3.5; the OCI distribution spec's token flow):

* ``Basic``: resend with the credentials, then send them up front on every later request;
* ``Bearer realm,service,scope``: ``GET realm?service=&scope=`` (with Basic credentials when we
  have some), cache the token per scope, resend. A ``401`` with ``error="insufficient_scope"``
  (a pull token used to push) fetches a new token for the union of the scopes.

An explicit bearer token (the API's ``bearer-token``) is sent as is, without any exchange.

Who may receive the stored credentials. The registry's own origin gets them (the client sends
``Authorization`` to no other origin). A token realm is often on another host
(``registry-1.docker.io`` sends ``realm="https://auth.docker.io/token"``), so a realm gets the
Basic credentials or identity token only when :func:`realm_may_receive_credentials` says so:

* the realm host is the registry's API host, on any port (one operator, one machine); or
* it is a parent domain of that host with at least two labels (``registry.gitlab.com`` sends
  ``gitlab.com``): whoever runs ``registry.gitlab.com`` got it delegated from ``gitlab.com``; or
* it is a known pair: Docker Hub's ``auth.docker.io``, NVIDIA NGC's ``authn.nvidia.com``; or
* the user named that host in ``config.json`` (``auths`` or ``credHelpers`` key), which is how
  to trust, say, ``gitlab.example.com`` as the realm of ``registry.example.com``.

Sibling hosts are not trusted by default: without the public-suffix list, ``a.azurecr.io`` and
``evil.azurecr.io`` look alike. Any other realm still gets a token request, but an anonymous one
(no ``Authorization``, no ``account``): a hostile registry learns nothing from it, public
repositories still pull, and when the registry then denies access the error names the realm
host the credentials were withheld from and how to trust it. Token requests do not follow
redirects to a host outside these rules with credentials, and a refresh-token ``POST`` does not
follow redirects at all (its body is the secret). Token answers are read through a 1 MiB cap
within the registry deadline (``watchdog.py``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from orchestrator.errors import RegistryDeniedError, RegistryError
from orchestrator.registry.manifest import MAX_TOKEN_BYTES, read_limited
from orchestrator.registry.transport import (
    MAX_REDIRECTS,
    check_next_url,
    describe_failure,
    same_origin,
)
from orchestrator.registry.watchdog import DEFAULT_DEADLINE_SECONDS, Watch

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_CREDENTIALS_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# Registries whose token realm lives on a host that is neither theirs nor a parent domain.
_KNOWN_REALM_HOSTS: dict[str, frozenset[str]] = {
    DOCKER_HUB_API_HOST: frozenset({"auth.docker.io"}),
    "nvcr.io": frozenset({"authn.nvidia.com"}),
}

# Tokens are refreshed this long before the expiry the token server announced.
_TOKEN_EXPIRY_MARGIN_SECONDS = 10.0
_DEFAULT_TOKEN_LIFETIME_SECONDS = 60.0
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

_SCHEME_TOKEN = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)")
_PARAM = re.compile(r'\s*,?\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')


def api_host(registry: str) -> str:
    """Return the host that serves the registry's ``/v2/`` API (Docker Hub's is special)."""
    return DOCKER_HUB_API_HOST if registry in _DOCKER_HUB_ALIASES else registry


def credentials_key(registry: str) -> str:
    """Return the key under which ``docker login`` stores this registry's credentials."""
    return DOCKER_HUB_CREDENTIALS_KEY if registry in _DOCKER_HUB_ALIASES else registry


def credential_host(key: str) -> str:
    """Reduce a ``config.json`` key (``https://host/v1/``, ``host``) to its host."""
    text = key.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    host = text.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def _hostname(host_or_url: str) -> str:
    """Return the lowercased host name of ``host[:port]`` or a URL (IPv6 without brackets)."""
    text = host_or_url if "://" in host_or_url else f"//{host_or_url}"
    return (urlsplit(text).hostname or "").lower().rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def realm_may_receive_credentials(
    registry: str, realm: str, trusted_hosts: frozenset[str] = frozenset()
) -> bool:
    """Return whether the token realm ``realm`` may get ``registry``'s stored credentials.

    The rule is the module docstring's: the registry's API host (any port), a parent domain of
    it with two labels or more, a known pair (Docker Hub, NVIDIA NGC), or a host in
    ``trusted_hosts`` (the hosts the user named in ``config.json``).
    """
    registry_host = _hostname(api_host(registry))
    realm_host = _hostname(realm)
    if not realm_host or not registry_host:
        return False
    if realm_host == registry_host or realm_host in trusted_hosts:
        return True
    if realm_host in _KNOWN_REALM_HOSTS.get(registry_host, frozenset()):
        return True
    if _is_ip(registry_host) or _is_ip(realm_host):
        return False
    return "." in realm_host and registry_host.endswith("." + realm_host)


def stored_credential_hosts(
    docker_config_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> frozenset[str]:
    """Return the hosts named as keys of ``auths`` and ``credHelpers`` in ``config.json``.

    ``credsStore`` is not counted: it applies to every host and says nothing about trust. An
    unreadable file names no host (:func:`load_credentials` reports it).
    """
    path = docker_config_path(docker_config_dir, environ)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return frozenset()
    hosts: set[str] = set()
    if isinstance(data, dict):
        for section in ("auths", "credHelpers"):
            entries = data.get(section)
            if isinstance(entries, dict):
                for key in entries:
                    host = credential_host(str(key))
                    hosts.add(_hostname(DOCKER_HUB_API_HOST if host == DOCKER_HUB else host))
    hosts.discard("")
    return frozenset(hosts)


@dataclass(frozen=True)
class Credentials:
    """A user name and secret for one registry.

    Attributes:
        username: Login name (empty with an identity token).
        password: Password or access token (never logged).
        identity_token: OAuth2 refresh token from ``docker login`` (``Username: <token>``).
    """

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def basic_header(self) -> str:
        """Return the ``Authorization: Basic`` value."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def docker_config_path(
    docker_config_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """Return the ``config.json`` that holds the credentials.

    Order: the explicit directory, ``$DOCKER_CONFIG``, ``~/.docker``.
    """
    env = os.environ if environ is None else environ
    if docker_config_dir is not None:
        return Path(docker_config_dir) / "config.json"
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    return Path(env.get("HOME") or Path.home()) / ".docker" / "config.json"


def load_credentials(
    registry: str,
    *,
    docker_config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    helper_timeout_seconds: float = 10.0,
) -> Credentials | None:
    """Return the stored credentials for ``registry``, or ``None`` (anonymous).

    Looks at ``credHelpers[registry]``, then ``auths`` (base64 ``auth`` or ``username`` and
    ``password``), then ``credsStore``. A missing or failing helper is logged and treated as
    anonymous, so a registry's 401 names the problem.

    Raises:
        RegistryError: ``config.json`` exists but is not valid JSON.
    """
    path = docker_config_path(docker_config_dir, environ)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as ex:
        raise RegistryError(
            f"could not read the docker credentials file '{path}': {ex}; fix or remove it"
        ) from ex
    if not isinstance(data, dict):
        return None
    host = credential_host(registry)
    key = credentials_key(registry)

    helpers = data.get("credHelpers")
    if isinstance(helpers, dict):
        for name_key, helper in helpers.items():
            if credential_host(str(name_key)) == host and isinstance(helper, str):
                return run_credential_helper(helper, key, environ, helper_timeout_seconds)

    auths = data.get("auths")
    if isinstance(auths, dict):
        for auth_key, entry in auths.items():
            if credential_host(str(auth_key)) == host and isinstance(entry, dict):
                found = _credentials_from_entry(entry, path)
                if found is not None:
                    return found

    store = data.get("credsStore")
    if isinstance(store, str) and store:
        return run_credential_helper(store, key, environ, helper_timeout_seconds)
    return None


def _credentials_from_entry(entry: dict[str, object], path: Path) -> Credentials | None:
    token = entry.get("identitytoken")
    identity = token if isinstance(token, str) and token else None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as ex:
            raise RegistryError(
                f"the 'auth' value in '{path}' is not base64 of 'user:password'; "
                f"run 'docker login' again"
            ) from ex
        user, _, password = decoded.partition(":")
        return Credentials(user, password, identity)
    name = entry.get("username")
    secret = entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret, identity)
    if identity is not None:
        return Credentials("", "", identity)
    return None


def run_credential_helper(
    name: str,
    server_url: str,
    environ: Mapping[str, str] | None = None,
    timeout_seconds: float = 10.0,
) -> Credentials | None:
    """Run ``docker-credential-<name> get`` with ``server_url`` on stdin.

    Returns ``None`` (and logs why) when the helper is missing, fails, times out or knows no
    credentials for the server.
    """
    if not _HELPER_NAME.fullmatch(name):
        log.warning("credential helper name refused helper=%r", name)
        return None
    env = dict(os.environ if environ is None else environ)
    program = shutil.which(f"docker-credential-{name}", path=env.get("PATH"))
    if program is None:
        log.warning("credential helper not found helper=docker-credential-%s", name)
        return None
    try:
        done = subprocess.run(
            [program, "get"],
            input=server_url.encode(),
            capture_output=True,
            timeout=timeout_seconds,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as ex:
        log.warning("credential helper failed helper=%s error=%s", name, ex)
        return None
    if done.returncode != 0:
        # "credentials not found in native keychain" is the documented not-found answer.
        log.info(
            "credential helper has no credentials helper=%s server=%s output=%r",
            name,
            server_url,
            done.stdout[:200] + done.stderr[:200],
        )
        return None
    try:
        answer = json.loads(done.stdout)
        username = str(answer.get("Username", ""))
        secret = str(answer.get("Secret", ""))
    except (json.JSONDecodeError, AttributeError) as ex:
        log.warning("credential helper answered non-JSON helper=%s error=%s", name, ex)
        return None
    if username == "<token>":
        return Credentials("", "", secret)
    return Credentials(username, secret)


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header (scheme lowercased)."""

    scheme: str
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value into its challenges.

    Handles quoted values with commas (``scope="repository:x:pull,push"``) and several
    challenges in one header (``Basic realm="a", Bearer realm="b"``).
    """
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        scheme = _SCHEME_TOKEN.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while True:
            param = _PARAM.match(header, pos)
            if param is None:
                break
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
        if pos == scheme.end() and not header[pos:].strip(" ,"):
            break
    return challenges


def merge_scopes(*scopes: str | None) -> list[str]:
    """Merge ``repository:<name>:<actions>`` scopes, uniting the actions per resource."""
    merged: dict[str, list[str]] = {}
    for scope_group in scopes:
        if not scope_group:
            continue
        for scope in scope_group.split(" "):
            parts = scope.rsplit(":", 1)
            if len(parts) != 2 or not parts[0]:
                merged.setdefault(scope, [])
                continue
            resource, actions = parts
            known = merged.setdefault(resource, [])
            for action in actions.split(","):
                if action and action not in known:
                    known.append(action)
    return [
        f"{resource}:{','.join(actions)}" if actions else resource
        for resource, actions in merged.items()
    ]


class Authenticator:
    """Authorization for one registry host, shared by the threads of one transfer.

    Args:
        session: HTTP session used for token requests.
        registry: Registry name as in the reference (for messages).
        credentials: Stored credentials or ``None`` (anonymous).
        bearer_token: Explicit token sent as ``Bearer`` without any exchange.
        insecure: Whether the registry is reached over plain HTTP (then an ``http`` realm is
            allowed; otherwise the realm must be ``https``).
        timeout_seconds: Timeout of each read of a token request.
        trusted_hosts: Extra realm hosts that may get the credentials (the hosts named in
            ``config.json``; see :func:`realm_may_receive_credentials`).
        deadline_seconds: A whole token request, answer included, must end within this.

    Attributes:
        withheld_from: The realm host the credentials were last withheld from, if any (for the
            message of a later denial).
    """

    def __init__(
        self,
        session: requests.Session,
        registry: str,
        *,
        credentials: Credentials | None = None,
        bearer_token: str | None = None,
        insecure: bool = False,
        timeout_seconds: float = 30.0,
        trusted_hosts: frozenset[str] = frozenset(),
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    ) -> None:
        self.session = session
        self.registry = registry
        self.credentials = credentials
        self.bearer_token = bearer_token
        self.insecure = insecure
        self.timeout_seconds = timeout_seconds
        self.trusted_hosts = trusted_hosts
        self.deadline_seconds = deadline_seconds
        self.withheld_from: str | None = None
        self._lock = threading.Lock()
        self._basic = False
        self._tokens: dict[str, tuple[str, float]] = {}

    def authorization(self, scope: str | None) -> str | None:
        """Return the ``Authorization`` value to send up front for ``scope``, if any."""
        if self.bearer_token:
            return f"Bearer {self.bearer_token}"
        with self._lock:
            if self._basic and self.credentials is not None:
                return self.credentials.basic_header()
            cached = self._tokens.get(scope or "")
            if cached is not None and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
        return None

    def handle_unauthorized(
        self, response: requests.Response, scope: str | None, sent: str | None
    ) -> bool:
        """React to a 401; return whether the request should be sent again.

        Args:
            response: The 401 answer with its ``WWW-Authenticate`` header.
            scope: Scope the request needs, e.g. ``repository:ai/x:pull,push``.
            sent: The ``Authorization`` value the failed request carried.

        Raises:
            RegistryDeniedError: The token server refused the credentials.
            RegistryError: The realm is unusable or the token server failed.
        """
        if self.bearer_token:
            return False
        challenges = parse_challenges(response.headers.get("WWW-Authenticate", ""))
        for challenge in challenges:
            if challenge.scheme == "basic":
                with self._lock:
                    if self.credentials is None or not self.credentials.username:
                        return False
                    if sent is not None and sent.startswith("Basic "):
                        return False
                    self._basic = True
                    return True
            if challenge.scheme == "bearer":
                return self._refresh_token(challenge, scope, sent)
        return False

    def _refresh_token(self, challenge: Challenge, scope: str | None, sent: str | None) -> bool:
        key = scope or ""
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and sent != f"Bearer {cached[0]}":
                # Another thread fetched a fresh token while this request was in flight.
                return True
            # No token yet, an expired one (invalid_token) or one with too few actions
            # (insufficient_scope): ask for the union of what we need and what the registry
            # names. The caller bounds how often a request is re-sent, so a real denial ends.
            wanted = merge_scopes(scope, challenge.params.get("scope"))
            token, lifetime = self._fetch_token(challenge, wanted)
            self._tokens[key] = (token, time.monotonic() + lifetime - _TOKEN_EXPIRY_MARGIN_SECONDS)
            return True

    def _check_realm(self, realm: str) -> None:
        parts = urlsplit(realm)
        allowed = ("https", "http") if self.insecure else ("https",)
        if parts.scheme not in allowed or not parts.hostname:
            raise RegistryError(
                f"registry '{self.registry}' sent the token realm {realm!r}, which is not an "
                f"{' or '.join(allowed)} URL; refusing to send credentials there",
                details={"realm": realm},
            )

    def _credentials_for(self, url: str) -> Credentials | None:
        """Return the credentials ``url`` may receive (``None``: ask anonymously)."""
        if self.credentials is None:
            return None
        if realm_may_receive_credentials(self.registry, url, self.trusted_hosts):
            return self.credentials
        host = urlsplit(url).hostname or url
        self.withheld_from = host
        log.warning(
            "registry credentials withheld from a foreign token realm registry=%s realm=%s",
            self.registry,
            host,
        )
        return None

    def _fetch_token(self, challenge: Challenge, scopes: list[str]) -> tuple[str, float]:
        realm = challenge.params.get("realm", "")
        self._check_realm(realm)
        watch = Watch(
            subject=f"the token server '{realm}' of registry '{self.registry}'",
            what="a token",
            deadline_seconds=self.deadline_seconds,
        )
        with watch:
            response, sent = self._request_token(realm, challenge.params.get("service"), scopes)
            with response:
                self._check_token_status(response, realm, scopes, sent)
                data = read_limited(
                    response, MAX_TOKEN_BYTES, f"the answer of the token server '{realm}'"
                )
        try:
            body = json.loads(data)
            token = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or _DEFAULT_TOKEN_LIFETIME_SECONDS)
        except (ValueError, AttributeError, TypeError) as ex:
            raise RegistryError(
                f"the token server '{realm}' sent an unreadable answer; try again later",
                details={"realm": realm},
            ) from ex
        if not isinstance(token, str) or not token:
            raise RegistryError(
                f"the token server '{realm}' sent no token; try again later",
                details={"realm": realm},
            )
        log.debug("registry token fetched registry=%s scopes=%s", self.registry, scopes)
        return token, max(lifetime, _TOKEN_EXPIRY_MARGIN_SECONDS + 1.0)

    def _request_token(
        self, realm: str, service: str | None, scopes: list[str]
    ) -> tuple[requests.Response, bool]:
        """Send the token request, following its redirects by hand; return the streamed
        answer and whether credentials went with the last hop.

        Each hop is judged like a realm of its own: credentials only where
        :func:`realm_may_receive_credentials` allows, never from https down to http.
        """
        url = realm
        credentials = self._credentials_for(url)
        try:
            if credentials is not None and credentials.identity_token:
                return self._refresh_grant(realm, credentials.identity_token, service, scopes), True
            first_query = [("service", service)] if service else []
            first_query += [("scope", scope) for scope in scopes]
            params: list[tuple[str, str]] | None = first_query
            for _ in range(MAX_REDIRECTS + 1):
                headers: dict[str, str] = {}
                sent = credentials is not None and bool(credentials.username)
                query = list(params) if params is not None else None
                if credentials is not None and sent:
                    if query is not None:
                        query.append(("account", credentials.username))
                    headers["Authorization"] = credentials.basic_header()
                response = self._send_token_request("GET", url, params=query, headers=headers)
                location = response.headers.get("Location") if response.is_redirect else None
                if not location:
                    return response, sent
                response.close()
                following = urljoin(url, location)
                check_next_url(url, following, f"the token server '{realm}'")
                if credentials is not None and not same_origin(following, url):
                    self._check_realm(following)
                    credentials = self._credentials_for(following)
                url, params = following, None  # a redirect's URL carries its own query
        except requests.RequestException as ex:
            raise RegistryError(
                f"could not reach the token server '{realm}' of registry '{self.registry}' "
                f"({describe_failure(ex)}); check the network and try again",
                details={"realm": realm, "error": str(ex)},
            ) from ex
        raise RegistryError(
            f"the token server '{realm}' redirected more than {MAX_REDIRECTS} times; try again "
            f"later",
            details={"realm": realm},
        )

    def _refresh_grant(
        self, realm: str, identity_token: str, service: str | None, scopes: list[str]
    ) -> requests.Response:
        """POST the OAuth2 refresh-token grant, what `docker login` with SSO leaves behind.

        Its body is the secret, so a redirect is refused rather than followed.
        """
        form = {
            "grant_type": "refresh_token",
            "refresh_token": identity_token,
            "client_id": "orchestrator",
            "scope": " ".join(scopes),
        }
        if service:
            form["service"] = service
        response = self._send_token_request("POST", realm, data=form)
        if response.is_redirect:
            response.close()
            raise RegistryError(
                f"the token server '{realm}' answered a refresh-token request with a redirect; "
                f"refusing to send the token elsewhere",
                details={"realm": realm, "status": response.status_code},
            )
        return response

    def _send_token_request(self, method: str, url: str, **kwargs: object) -> requests.Response:
        return self.session.request(
            method,
            url,
            stream=True,
            allow_redirects=False,
            timeout=self.timeout_seconds,
            **kwargs,  # type: ignore[arg-type]
        )

    def _check_token_status(
        self, response: requests.Response, realm: str, scopes: list[str], sent: bool
    ) -> None:
        if response.status_code in (401, 403):
            raise RegistryDeniedError(
                f"the token server of registry '{self.registry}' refused "
                f"{'the stored credentials' if sent else 'anonymous access'} "
                f"(HTTP {response.status_code}); run 'docker login {self.registry}' "
                f"with an account that may access it{'' if sent else self.withheld_hint()}",
                details={"realm": realm, "scopes": scopes},
            )
        if response.status_code != 200:
            raise RegistryError(
                f"the token server '{realm}' answered HTTP {response.status_code}; try again later",
                details={"realm": realm, "status": response.status_code},
            )

    def withheld_hint(self) -> str:
        """Return advice for a denial when credentials were withheld from the realm, else ``""``."""
        if self.withheld_from is None:
            return ""
        return (
            f"; the stored credentials were not sent to the token server '{self.withheld_from}' "
            f"because it is not a host of '{self.registry}' (name it in the 'auths' of "
            f"docker's config.json to trust it)"
        )
