"""The user's registry credentials, sent with a pull or push as ``X-Registry-Auth``.

The daemon usually runs as its own user (the packaged service) and cannot read the
``docker login`` of the user at the keyboard; the Docker CLI solves the same problem for the
Docker Engine by sending the credentials with each request, and so does this CLI. They are
resolved the way the daemon resolves its own (:func:`~orchestrator.registry.auth.load_credentials`:
``credHelpers``, ``auths``, ``credsStore`` of ``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``) for the one registry the reference names, and only for it.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.errors import InvalidReferenceError
from orchestrator.registry.auth import credentials_key, load_credentials
from orchestrator.registry.request_auth import HEADER, encode_registry_auth
from orchestrator.store.reference import parse_model_id, parse_reference


def registry_auth_headers(model: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Return ``{"X-Registry-Auth": ...}`` for ``model``'s registry, or ``{}`` without any.

    Hugging Face references get none (``HF_TOKEN`` travels as the request's bearer token), nor
    do model IDs and references the daemon will refuse anyway.

    Raises:
        RegistryError: The Docker config file exists but cannot be read.
    """
    if parse_model_id(model) is not None:
        return {}
    try:
        ref = parse_reference(model)
    except InvalidReferenceError:
        return {}
    if ref.is_huggingface:
        return {}
    credentials = load_credentials(ref.registry, environ=environ)
    if credentials is None:
        return {}
    return {HEADER: encode_registry_auth(credentials, credentials_key(ref.registry))}
