"""Parse and normalise model references (DMR spec section 2.1).

A reference names a model in a registry: ``[registry/]repository[:tag][@digest]``. Normalising
follows Docker Model Runner exactly: ``hf.co/`` becomes ``huggingface.co/``, a missing tag is
``latest``, a one-component name gets the ``ai/`` organisation, the name is lowercased (the tag
keeps its case), and the default registry is ``docker.io``. Model IDs (``sha256:<64 hex>``,
64 hex, or a 12-hex short ID) are recognised separately by :func:`parse_model_id`.

Everything here is pure: no filesystem, no network. A reference that could escape a directory
(``..``, absolute paths, backslashes, control characters) is rejected before anything else
looks at it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from orchestrator.errors import InvalidReferenceError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_ORG = "ai"
DEFAULT_TAG = "latest"
HUGGINGFACE_REGISTRY = "huggingface.co"
MAX_REFERENCE_LENGTH = 255

# Docker distribution's grammar (reference/regexp.go), with lowercase components only:
# names are lowercased before this check, as DMR does.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)  # ASCII: Docker's \w is [A-Za-z0-9_]
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HEX64 = re.compile(r"[a-f0-9]{64}")
_HEX12 = re.compile(r"[a-f0-9]{12}")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\\s]")

# NOTE(settings): DMR reads DEFAULT_REGISTRY once per process and every parse (pull, store
# lookups, CLI filters) uses it; threading it through every caller would change dozens of
# signatures for one value, so it is process state, set once at start-up by the daemon
# (server.run) and per command by the CLI (modelcli.main), and read only here.
_process_default_registry = DEFAULT_REGISTRY


def set_default_registry(registry: str) -> str:
    """Make ``registry`` the registry of references that name none; return the previous one.

    Only start-up code calls this (``DEFAULT_REGISTRY``); tests restore the returned value.
    """
    global _process_default_registry
    previous = _process_default_registry
    _process_default_registry = registry or DEFAULT_REGISTRY
    return previous


def default_registry() -> str:
    """Return the registry of references that name none (``docker.io`` unless configured)."""
    return _process_default_registry


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A normalised reference to a model in a registry.

    Attributes:
        registry: Host (and port) of the registry, e.g. ``docker.io``, ``127.0.0.1:5000``.
        repository: Path inside the registry, e.g. ``ai/smollm2``.
        tag: Tag, ``latest`` when none was given (case kept).
        digest: ``sha256:<hex>`` when the reference pins a manifest digest, else ``None``.
        original: The text the user typed, trimmed.
    """

    registry: str
    repository: str
    tag: str = DEFAULT_TAG
    digest: str | None = None
    original: str = ""

    @property
    def name(self) -> str:
        """Return ``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    @property
    def tag_string(self) -> str:
        """Return the tag identity stored in ``models.json``, e.g. ``docker.io/ai/x:latest``."""
        return f"{self.name}:{self.tag}"

    @property
    def familiar(self) -> str:
        """Return the short display form (no ``docker.io/``, ``ai/`` or ``:latest``)."""
        return familiar_name(self.tag_string)

    @property
    def is_huggingface(self) -> bool:
        """Return whether the reference points at the Hugging Face Hub."""
        return self.registry == HUGGINGFACE_REGISTRY

    def __str__(self) -> str:
        text = self.tag_string
        return f"{text}@{self.digest}" if self.digest else text


def _reject(raw: str, why: str) -> InvalidReferenceError:
    shown = raw if len(raw) <= 80 else raw[:77] + "..."
    return InvalidReferenceError(
        f"invalid model reference {shown!r}: {why}; use a name such as 'ai/smollm2', "
        f"'ai/smollm2:135M-Q4_1' or 'registry.example.com/org/model:tag'",
        param="model",
    )


def _check_safe(raw: str) -> None:
    if not raw:
        raise _reject(raw, "it is empty")
    if len(raw) > MAX_REFERENCE_LENGTH:
        raise _reject(raw, f"it is longer than {MAX_REFERENCE_LENGTH} characters")
    if _FORBIDDEN.search(raw):
        raise _reject(raw, "it contains whitespace, a control character or a backslash")
    if not raw.isascii():
        # Lowercasing could turn a look-alike (U+212A KELVIN SIGN) into an ASCII name.
        raise _reject(raw, "it contains a non-ASCII character")
    if raw.startswith("/") or raw.startswith("."):
        raise _reject(raw, "it must not start with '/' or '.' (it is not a file path)")
    if ".." in raw.split("@", 1)[0].split("/"):
        raise _reject(raw, "'..' is not a valid path component")
    if "//" in raw:
        raise _reject(raw, "it contains an empty path component")


def parse_model_id(raw: str) -> str | None:
    """Return ``sha256:<hex>`` (full) or the 12-hex short ID when ``raw`` is a model ID.

    Returns ``None`` when ``raw`` is not ID-shaped; the caller then parses it as a reference.
    """
    text = raw.strip()
    if _DIGEST.fullmatch(text):
        return text
    if _HEX64.fullmatch(text):
        return "sha256:" + text
    if _HEX12.fullmatch(text):
        return text
    return None


def normalize(raw: str) -> str:
    """Return the normalised tag identity of ``raw`` (``docker.io/ai/smollm2:latest``).

    IDs are returned in their canonical form (``sha256:<hex>`` or the 12-hex short ID).

    Raises:
        InvalidReferenceError: ``raw`` is not a valid reference.
    """
    model_id = parse_model_id(raw)
    if model_id is not None:
        return model_id
    return str(parse_reference(raw))


def parse_reference(raw: str, *, default_registry: str | None = None) -> ModelRef:
    """Parse and normalise a model reference.

    Args:
        raw: What the user typed, e.g. ``smollm2``, ``hf.co/org/repo:Q4_K_M``,
            ``127.0.0.1:5000/team/model@sha256:...``.
        default_registry: Registry used when the reference names none (default: the
            process's, :func:`set_default_registry`).

    Raises:
        InvalidReferenceError: The text is not a valid reference.
    """
    text = raw.strip()
    _check_safe(text)

    digest: str | None = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise _reject(raw, f"digest {digest!r} is not 'sha256:' followed by 64 hex digits")
        if not text:
            raise _reject(raw, "a digest needs a repository name before '@'")

    if text.startswith("hf.co/"):
        text = HUGGINGFACE_REGISTRY + text[len("hf.co") :]

    # The tag follows the last ':' after the last '/', so a registry port is not a tag.
    last_slash = text.rfind("/")
    tag = ""
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1 :]
    tag = tag or DEFAULT_TAG
    if not _TAG.fullmatch(tag):
        raise _reject(raw, f"tag {tag!r} may hold only letters, digits, '_', '.' and '-'")

    components = text.split("/")
    if default_registry is None:
        default_registry = _process_default_registry
    registry = default_registry
    first = components[0]
    if len(components) > 1 and ("." in first or ":" in first or first.lower() == "localhost"):
        registry = first.lower()
        if not _DOMAIN.fullmatch(first):
            raise _reject(raw, f"registry {first!r} is not a valid host name")
        components = components[1:]
    if not components or not components[0]:
        raise _reject(raw, "it has no repository name")
    if len(components) == 1 and registry == default_registry:
        components = [DEFAULT_ORG, *components]

    components = [component.lower() for component in components]
    for component in components:
        if not _PATH_COMPONENT.fullmatch(component):
            raise _reject(
                raw,
                f"name component {component!r} may hold only lowercase letters, digits "
                f"and single separators ('.', '_', '-')",
            )
    return ModelRef(
        registry=registry,
        repository="/".join(components),
        tag=tag,
        digest=digest,
        original=raw.strip(),
    )


def familiar_name(tag_string: str) -> str:
    """Strip ``docker.io/``, ``index.docker.io/``, ``ai/`` and ``:latest`` for display."""
    text = tag_string
    for prefix in ("docker.io/", "index.docker.io/"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if text.startswith(DEFAULT_ORG + "/"):
        text = text[len(DEFAULT_ORG) + 1 :]
    if text.endswith(":" + DEFAULT_TAG):
        text = text[: -len(DEFAULT_TAG) - 1]
    return text


def model_label(tags: Sequence[str], model_id: str) -> str:
    """Return the one name a model goes by in ``ps``, metrics, logs and messages.

    The familiar form of its first tag (``smollm2:135M-Q4_1``); an untagged model goes by its
    12-hex short ID. Every surface calls this, so one model never shows under two names.
    """
    if tags:
        return familiar_name(tags[0])
    return model_id.rpartition(":")[2][:12]


def is_insecure_registry(registry: str, extra: tuple[str, ...] = ()) -> bool:
    """Return whether ``registry`` is reached over plain HTTP.

    Loopback hosts and ``*.local`` always are (as in DMR); others only when listed in ``extra``
    (``DMR_INSECURE_REGISTRIES``).
    """
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry
    host = host.strip("[]").split("]")[0].lower()
    if registry in extra or host in extra:
        return True
    return host in ("localhost", "::1") or host.startswith("127.") or host.endswith(".local")
