"""Registry credentials that come with one API request: the ``X-Registry-Auth`` header.

The Docker Engine API's convention, so the ``docker login`` of the user running the CLI reaches
a daemon that runs as its own user: the client sends base64url of a JSON object,
``{"username", "password", "serveraddress"}``, ``{"identitytoken", "serveraddress"}`` or
``{"registrytoken"}`` (``auth``, base64 of ``user:password``, is accepted for ``username`` and
``password``; ``email`` is ignored).

Rules the daemon keeps:

* the credentials serve the one pull or push they came with, and are dropped with it: nothing
  stores them, and they are never logged (the request recorder keeps no headers but two);
* they go only to the registry they name (``serveraddress``, or, without one, the registry of
  the reference being pulled or pushed): a mirror, another registry or a token realm that
  :func:`~orchestrator.registry.auth.realm_may_receive_credentials` refuses never sees them;
* a header that is not base64url of a JSON object of strings is a 400, not silently anonymous.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field, replace

from orchestrator.errors import InvalidRequestError
from orchestrator.registry.auth import Credentials, credential_host

HEADER = "X-Registry-Auth"
MAX_HEADER_CHARS = 16 * 1024
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_FIELDS = ("username", "password", "auth", "email", "serveraddress", "identitytoken",
           "registrytoken")  # fmt: skip


@dataclass(frozen=True)
class RequestAuth:
    """Credentials from one request's ``X-Registry-Auth``.

    Attributes:
        credentials: User and password, or an identity token; ``None`` with only a token.
        registry_token: A bearer token sent to the registry as is (``registrytoken``).
        server_address: The registry they belong to, as its credentials key
            (``https://index.docker.io/v1/``, ``127.0.0.1:5000``); empty until
            :meth:`bound_to` names the request's registry.
    """

    credentials: Credentials | None = field(default=None, repr=False)
    registry_token: str | None = field(default=None, repr=False)
    server_address: str = ""

    def bound_to(self, registry: str) -> RequestAuth:
        """Return these credentials, for ``registry`` when they name no registry themselves."""
        return self if self.server_address else replace(self, server_address=registry)

    def applies_to(self, registry: str) -> bool:
        """Return whether ``registry`` is the registry these credentials belong to."""
        if not self.server_address:
            return False
        return credential_host(self.server_address) == credential_host(registry)


def _invalid(why: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"the {HEADER} header is not valid: {why}; send base64url of a JSON object such as "
        '{"username": "...", "password": "...", "serveraddress": "registry.example.com"}',
        param=HEADER,
    )


def decode_registry_auth(value: str) -> RequestAuth | None:
    """Decode an ``X-Registry-Auth`` value; ``None`` when it carries no credentials.

    Padding may be left out (Docker's clients differ). The message of a refusal never quotes
    the value.

    Raises:
        InvalidRequestError: Not base64url, not a JSON object of strings, or an ``auth`` field
            that is not base64 of ``user:password``.
    """
    text = value.strip()
    if not text:
        return None
    if len(text) > MAX_HEADER_CHARS:
        raise _invalid(f"it is longer than {MAX_HEADER_CHARS} characters")
    if not _BASE64URL.fullmatch(text):
        raise _invalid("it is not base64url (A-Z, a-z, 0-9, '-', '_')")
    try:
        raw = base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))
        data = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError) as ex:
        raise _invalid("it does not decode to JSON") from ex
    if not isinstance(data, dict):
        raise _invalid("it decodes to JSON that is not an object")
    fields: dict[str, str] = {}
    for key, item in data.items():
        name = str(key).lower()
        if name not in _FIELDS:
            continue  # Docker ignores fields it does not know; so do we
        if item is None:
            continue
        if not isinstance(item, str):
            raise _invalid(f"field {name!r} is not a string")
        fields[name] = item
    return _from_fields(fields)


def _from_fields(fields: dict[str, str]) -> RequestAuth | None:
    username, password = fields.get("username", ""), fields.get("password", "")
    if fields.get("auth"):
        try:
            decoded = base64.b64decode(fields["auth"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as ex:
            raise _invalid("field 'auth' is not base64 of 'user:password'") from ex
        username, _, password = decoded.partition(":")
    identity = fields.get("identitytoken") or None
    token = fields.get("registrytoken") or None
    credentials = None
    if (username and password) or identity:
        credentials = Credentials(username, password, identity)
    if credentials is None and token is None:
        return None
    return RequestAuth(credentials, token, fields.get("serveraddress", "").strip())


def encode_registry_auth(credentials: Credentials, server_address: str) -> str:
    """Return the ``X-Registry-Auth`` value for ``credentials`` of ``server_address``."""
    document: dict[str, str] = {"serveraddress": server_address}
    if credentials.identity_token:
        document["identitytoken"] = credentials.identity_token
    else:
        document["username"] = credentials.username
        document["password"] = credentials.password
    return base64.urlsafe_b64encode(json.dumps(document).encode("utf-8")).decode("ascii")
