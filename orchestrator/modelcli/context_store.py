"""Named daemon endpoints (``docker model context``) kept in the user's Docker config folder.

The file is DMR's, so both CLIs share it: ``$DOCKER_CONFIG/model/contexts.json`` (else
``~/.docker/model/contexts.json``)::

    {"version": 1, "current": "remote",
     "contexts": {"remote": {"host": "http://192.168.1.10:12434",
                             "tls": {"enabled": false}, "description": "...",
                             "createdAt": "2025-01-01T00:00:00.000000Z"}}}

``current`` absent means the reserved context ``default`` (never stored). Changes happen under
an exclusive ``flock`` on ``contexts.lock`` beside the file (two commands at once must not lose
each other's change; a holder stuck for 10 s is an error, not a hang) and replace the file
atomically with mode 0600 (:mod:`orchestrator.atomicfile`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.atomicfile import write_atomic
from orchestrator.errors import ConfigError, ConflictError, InvalidRequestError, NotFoundError
from orchestrator.store.layout import StoreLock

DEFAULT_CONTEXT = "default"
FILE_VERSION = 1
FILE_NAME = "contexts.json"
LOCK_NAME = "contexts.lock"
# Another docker model command holds the lock for milliseconds; one that waits longer is stuck.
LOCK_TIMEOUT_SECONDS = 10.0
# Docker's context naming rule, as DMR applies it.
_VALID_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


@dataclass(frozen=True)
class TlsSettings:
    """TLS settings of a context (DMR's ``tls`` object).

    Attributes:
        enabled: Talk https even when ``host`` says http.
        skip_verify: Do not check the daemon's certificate.
        ca_cert: Absolute path of a PEM bundle to check it against.
    """

    enabled: bool = False
    skip_verify: bool = False
    ca_cert: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return DMR's JSON (``skipVerify`` and ``caCert`` only when set)."""
        document: dict[str, Any] = {"enabled": self.enabled}
        if self.skip_verify:
            document["skipVerify"] = True
        if self.ca_cert:
            document["caCert"] = self.ca_cert
        return document


@dataclass(frozen=True)
class ModelContext:
    """One named endpoint.

    Attributes:
        host: Base URL of the daemon (``http://host:12434``, ``https://...``, ``unix:///x.sock``).
        tls: TLS settings.
        description: Free text for ``context ls``.
        created_at: RFC 3339 UTC time of creation, as DMR writes it.
    """

    host: str
    tls: TlsSettings = field(default_factory=TlsSettings)
    description: str = ""
    created_at: str = ""

    def to_json(self) -> dict[str, Any]:
        """Return the stored JSON object."""
        document: dict[str, Any] = {"host": self.host, "tls": self.tls.to_json()}
        if self.description:
            document["description"] = self.description
        document["createdAt"] = self.created_at or "0001-01-01T00:00:00Z"
        return document


def now_rfc3339() -> str:
    """Return the current UTC time as Go's ``time.Time`` marshals it (microseconds here)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _quoted(name: str) -> str:
    # Go's %q, as DMR's messages quote names.
    return json.dumps(name, ensure_ascii=False)


def validate_name(name: str) -> None:
    """Refuse the reserved name and names Docker would not accept.

    Raises:
        InvalidRequestError: ``default``, or not ``[a-zA-Z0-9][a-zA-Z0-9_.-]*``.
    """
    if name == DEFAULT_CONTEXT:
        raise InvalidRequestError(f"context name {_quoted(name)} is reserved")
    if not _VALID_NAME.fullmatch(name):
        raise InvalidRequestError(
            f"invalid context name {_quoted(name)}: use letters, digits, '_', '.' and '-', "
            f"starting with a letter or digit"
        )


def docker_config_dir(environ: Mapping[str, str]) -> Path:
    """Return ``$DOCKER_CONFIG``, else ``$HOME/.docker`` (the Docker CLI's rule)."""
    configured = environ.get("DOCKER_CONFIG", "").strip()
    if configured:
        return Path(configured)
    home = environ.get("HOME", "").strip()
    return (Path(home) if home else Path.home()) / ".docker"


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _parse_context(name: str, value: object, path: Path) -> ModelContext:
    if not isinstance(value, dict) or not isinstance(value.get("host"), str):
        raise ConfigError(f"context {_quoted(name)} in {path} has no host; fix or remove it")
    raw_tls = value.get("tls")
    tls: dict[str, Any] = raw_tls if isinstance(raw_tls, dict) else {}
    return ModelContext(
        host=value["host"],
        tls=TlsSettings(
            enabled=tls.get("enabled") is True,
            skip_verify=tls.get("skipVerify") is True,
            ca_cert=_text(tls.get("caCert")),
        ),
        description=_text(value.get("description")),
        created_at=_text(value.get("createdAt")),
    )


@dataclass
class _ContextFile:
    current: str
    contexts: dict[str, ModelContext]

    def to_bytes(self) -> bytes:
        document: dict[str, Any] = {"version": FILE_VERSION}
        if self.current and self.current != DEFAULT_CONTEXT:
            document["current"] = self.current
        document["contexts"] = {name: ctx.to_json() for name, ctx in self.contexts.items()}
        return (json.dumps(document, indent=4, ensure_ascii=False) + "\n").encode()


class ContextStore:
    """Read and change the contexts file.

    Args:
        path: The ``contexts.json`` file (its folder is created on the first change).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_environ(cls, environ: Mapping[str, str]) -> ContextStore:
        """Return the store of the user the environment describes (``DOCKER_CONFIG``)."""
        return cls(docker_config_dir(environ) / "model" / FILE_NAME)

    def _read(self) -> _ContextFile:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return _ContextFile(current="", contexts={})
        except OSError as ex:
            raise ConfigError(f"cannot read the contexts file {self.path}: {ex.strerror}") from ex
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as ex:
            raise ConfigError(
                f"the contexts file {self.path} is not valid JSON; fix or remove it"
            ) from ex
        if not isinstance(document, dict):
            raise ConfigError(f"the contexts file {self.path} is not a JSON object")
        raw_contexts = document.get("contexts") or {}
        if not isinstance(raw_contexts, dict):
            raise ConfigError(f"'contexts' in {self.path} is not a JSON object")
        current = document.get("current")
        return _ContextFile(
            current=current if isinstance(current, str) else "",
            contexts={
                name: _parse_context(name, value, self.path) for name, value in raw_contexts.items()
            },
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # 0700: the folder sits in the Docker config folder, next to credentials.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = StoreLock(
            self.path.parent / LOCK_NAME, timeout_seconds=LOCK_TIMEOUT_SECONDS,
            purpose=f"the contexts file {self.path}",
        )  # fmt: skip
        with lock.hold():
            yield

    def _update(self, change: Callable[[_ContextFile], None]) -> None:
        try:
            with self._locked():
                # Read again under the lock: another command may have changed the file.
                state = self._read()
                change(state)
                write_atomic(self.path, state.to_bytes(), mode=0o600)
        except OSError as ex:
            raise ConfigError(
                f"cannot write the contexts file {self.path}: {ex.strerror or ex}"
            ) from ex

    def list(self) -> dict[str, ModelContext]:
        """Return every named context (``default`` is not stored)."""
        return self._read().contexts

    def get(self, name: str) -> ModelContext:
        """Return one context.

        Raises:
            NotFoundError: No such context.
        """
        found = self._read().contexts.get(name)
        if found is None:
            raise NotFoundError(f"context {_quoted(name)} not found")
        return found

    def active(self) -> str:
        """Return the selected context's name (``default`` when none is)."""
        return self._read().current or DEFAULT_CONTEXT

    def create(self, name: str, context: ModelContext) -> None:
        """Store a new context.

        Raises:
            InvalidRequestError: Reserved or invalid name.
            ConflictError: The name is taken.
        """
        validate_name(name)

        def add(state: _ContextFile) -> None:
            if name in state.contexts:
                raise ConflictError(f"context {_quoted(name)} already exists")
            state.contexts[name] = context

        self._update(add)

    def remove(self, name: str) -> None:
        """Delete a context; the selected one cannot be deleted.

        Raises:
            InvalidRequestError: ``default``.
            NotFoundError: No such context.
            ConflictError: It is the selected context.
        """
        if name == DEFAULT_CONTEXT:
            raise InvalidRequestError(
                f"context name {_quoted(name)} is reserved and cannot be removed"
            )

        def drop(state: _ContextFile) -> None:
            if name not in state.contexts:
                raise NotFoundError(f"context {_quoted(name)} not found")
            if state.current == name:
                raise ConflictError(
                    f"context {_quoted(name)} is currently active; switch to another context first"
                )
            del state.contexts[name]

        self._update(drop)

    def set_active(self, name: str) -> None:
        """Select a context; ``default`` goes back to the default endpoint.

        Raises:
            InvalidRequestError: Invalid name.
            NotFoundError: No such context.
        """
        if name != DEFAULT_CONTEXT:
            validate_name(name)

        def select(state: _ContextFile) -> None:
            if name != DEFAULT_CONTEXT and name not in state.contexts:
                raise NotFoundError(f"context {_quoted(name)} not found")
            state.current = "" if name == DEFAULT_CONTEXT else name

        self._update(select)
