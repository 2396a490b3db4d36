"""Per-model runner settings from ``_configure``: parsing and a persisted store.

DMR keeps these settings in memory, so ``docker model configure`` is forgotten by ``unload``
and by a daemon restart. Here they are written to ``<store root>/runner-configs.json`` (temp
file, fsync, rename) keyed by (model ID, mode), and stay until configured again or the model is
deleted from the store.

The request JSON mixes key styles exactly as DMR's (``context-size``, ``runtime-flags``,
``raw-runtime-flags``, ``keep_alive``); see ``dmr-spec.md`` section 1.5.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchestrator.atomicfile import write_atomic
from orchestrator.errors import InvalidRequestError, StoreError
from orchestrator.runners.engineflags import MODES, validate_runtime_flags
from orchestrator.runners.speculative import SpeculativeSettings, parse_speculative
from orchestrator.settings import format_duration, parse_duration

log = logging.getLogger(__name__)

CONFIG_FILE_NAME = "runner-configs.json"
_FILE_VERSION = 1
_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class RunnerSettings:
    """How to start the runner of one model in one mode.

    Attributes:
        context_size: ``--ctx-size``; ``None`` = model config, else daemon default; ``-1`` =
            the model's training context.
        runtime_flags: Extra llama-server flags, already validated.
        keep_alive: Idle seconds before the runner stops; ``0`` = as soon as idle, ``-1`` =
            never, ``None`` = the daemon's ``keep_alive``.
        mode: ``completion``, ``embedding`` or ``reranking``.
        reasoning_budget: ``--reasoning-budget`` (``llamacpp.reasoning-budget``), if set.
        pinned: Never evicted to make room for another model (memory, runner count or memory
            pressure); keep-alive and unload still stop it.
        speculative: The draft model for speculative decoding, if any.
    """

    context_size: int | None = None
    runtime_flags: tuple[str, ...] = ()
    keep_alive: float | None = None
    mode: str = "completion"
    reasoning_budget: int | None = None
    pinned: bool = False
    speculative: SpeculativeSettings | None = None

    def same_process(self, other: RunnerSettings | None) -> bool:
        """Return whether a runner started with ``other`` has the command line these give.

        ``keep_alive`` and ``pinned`` are scheduling policy: changing them needs no restart.
        """
        if other is None:
            return False
        mine = dataclasses.replace(self, keep_alive=None, pinned=False)
        return mine == dataclasses.replace(other, keep_alive=None, pinned=False)

    def to_api(self) -> dict[str, Any]:
        """Return the ``Config`` object of a ``GET /engines/_configure`` entry."""
        body: dict[str, Any] = {}
        if self.context_size is not None:
            body["context-size"] = self.context_size
        if self.runtime_flags:
            body["runtime-flags"] = list(self.runtime_flags)
        if self.keep_alive is not None:
            body["keep_alive"] = format_duration(self.keep_alive)
        if self.reasoning_budget is not None:
            body["llamacpp"] = {"reasoning-budget": self.reasoning_budget}
        if self.pinned:
            body["pinned"] = True
        if self.speculative is not None:
            body["speculative"] = self.speculative.to_api()
        return body

    def to_json(self) -> dict[str, Any]:
        """Return the form stored in ``runner-configs.json``."""
        return {
            "mode": self.mode,
            "context_size": self.context_size,
            "runtime_flags": list(self.runtime_flags),
            "keep_alive": self.keep_alive,
            "reasoning_budget": self.reasoning_budget,
            "pinned": self.pinned,
            "speculative": self.speculative.to_json() if self.speculative else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunnerSettings:
        """Rebuild settings stored by :meth:`to_json` (flags are validated again).

        Raises:
            InvalidRequestError: A stored flag is no longer allowed.
            ValueError, TypeError: The stored entry is malformed.
        """
        mode = str(data.get("mode", "completion"))
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        context_size = data.get("context_size")
        keep_alive = data.get("keep_alive")
        budget = data.get("reasoning_budget")
        speculative = data.get("speculative")
        return cls(
            context_size=None if context_size is None else int(context_size),
            runtime_flags=validate_runtime_flags(list(data.get("runtime_flags") or ())),
            keep_alive=None if keep_alive is None else float(keep_alive),
            mode=mode,
            reasoning_budget=None if budget is None else int(budget),
            pinned=data.get("pinned") is True,
            speculative=SpeculativeSettings.from_json(speculative) if speculative else None,
        )


@dataclasses.dataclass(frozen=True)
class ConfigureRequest:
    """A parsed ``POST /engines/_configure`` body.

    Attributes:
        model: The model reference as given (the caller resolves it in the store).
        settings: The settings to store for that model and ``settings.mode``.
    """

    model: str
    settings: RunnerSettings


def _parse_int(value: object, param: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequestError(f"{param} must be {what}, got {value!r}", param=param)
    try:
        number = int(value) if not isinstance(value, str) else int(value.strip())
    except ValueError as ex:
        raise InvalidRequestError(f"{param} must be {what}, got {value!r}", param=param) from ex
    if isinstance(value, float) and number != value:
        raise InvalidRequestError(f"{param} must be {what}, got {value!r}", param=param)
    return number


def _parse_context_size(value: object) -> int | None:
    if value is None:
        return None
    size = _parse_int(value, "context-size", "a whole number of tokens (or -1 for the model's)")
    if size == 0:
        return None
    if size < -1 or size > _INT32_MAX:
        raise InvalidRequestError(
            f"context-size {size!r} is out of range; use a positive number of tokens such as "
            f"4096, or -1 for the model's own context",
            param="context-size",
        )
    return size


def _parse_keep_alive(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequestError(
            f"keep_alive must be a duration such as '5m', '0' or '-1', got {value!r}",
            param="keep_alive",
        )
    try:
        return parse_duration(value)
    except ValueError as ex:
        raise InvalidRequestError(
            f"keep_alive {value!r} is not a duration; use a value such as '10m', '1h', '0' "
            f"(stop when idle) or '-1' (never)",
            param="keep_alive",
        ) from ex


def _parse_flags(body: Mapping[str, Any]) -> tuple[str, ...]:
    flags = body.get("runtime-flags")
    if flags is not None and not isinstance(flags, list):
        raise InvalidRequestError(
            f"runtime-flags must be a list of strings, got {flags!r}", param="runtime-flags"
        )
    if not flags:
        raw = body.get("raw-runtime-flags")
        if raw is None or raw == "":
            return ()
        if not isinstance(raw, str):
            raise InvalidRequestError(
                f"raw-runtime-flags must be a string, got {raw!r}", param="raw-runtime-flags"
            )
        try:
            flags = shlex.split(raw)
        except ValueError as ex:
            raise InvalidRequestError(
                f"raw-runtime-flags {raw!r} cannot be split into words ({ex}); check its quotes",
                param="raw-runtime-flags",
            ) from ex
    return validate_runtime_flags(flags)


def parse_configure_request(body: object) -> ConfigureRequest:
    """Parse a DMR ConfigureRequest JSON object.

    Keys: ``model`` (required), ``mode``, ``context-size``, ``runtime-flags`` (wins over)
    ``raw-runtime-flags`` (shell words), ``keep_alive`` (Go duration, ``"0"``, ``"-1"``),
    ``llamacpp.reasoning-budget``, ``pinned`` (ours: never evicted for another model),
    ``speculative`` (:func:`~orchestrator.runners.speculative.parse_speculative`; the draft is
    resolved by the caller). The mode defaults to ``completion``, or ``embedding`` when the
    flags hold ``--embeddings``. Unknown keys and ``vllm`` are ignored, as DMR does.

    Raises:
        InvalidRequestError: A value is missing, of the wrong type or not allowed.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequestError(
            "the request body must be a JSON object such as "
            '{"model": "ai/smollm2", "context-size": 8192}'
        )
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError("model is required; name the model to configure", param="model")
    flags = _parse_flags(body)
    mode = body.get("mode")
    if mode is None or mode == "":
        embeds = any(f in ("--embeddings", "--embedding") for f in flags)
        mode = "embedding" if embeds else "completion"
    if mode not in MODES:
        raise InvalidRequestError(
            f"unknown mode {mode!r}; use one of {', '.join(repr(m) for m in MODES)}", param="mode"
        )
    speculative = parse_speculative(body.get("speculative"))
    if speculative is not None and mode != "completion":
        raise InvalidRequestError(
            f"speculative decoding drafts generated tokens, so it applies to completion mode "
            f"only, not {mode!r}; leave out 'speculative' or the mode",
            param="speculative",
        )
    budget: int | None = None
    llamacpp = body.get("llamacpp")
    if llamacpp is not None:
        if not isinstance(llamacpp, Mapping):
            raise InvalidRequestError(
                f"llamacpp must be an object, got {llamacpp!r}", param="llamacpp"
            )
        if llamacpp.get("reasoning-budget") is not None:
            budget = _parse_int(
                llamacpp["reasoning-budget"], "reasoning-budget", "a whole number of tokens"
            )
    pinned = body.get("pinned", False)
    if pinned is None:
        pinned = False
    if not isinstance(pinned, bool):
        raise InvalidRequestError(f"pinned must be true or false, got {pinned!r}", param="pinned")
    settings = RunnerSettings(
        context_size=_parse_context_size(body.get("context-size")),
        runtime_flags=flags,
        keep_alive=_parse_keep_alive(body.get("keep_alive")),
        mode=str(mode),
        reasoning_budget=budget,
        pinned=pinned,
        speculative=speculative,
    )
    return ConfigureRequest(model=model.strip(), settings=settings)


class RunnerConfigStore:
    """Settings by (model ID, mode), persisted in one JSON file.

    Thread-safe; every change rewrites the file atomically (temp file in the same directory,
    fsync, rename, fsync of the directory), so a crash leaves the old or the new file, never a
    torn one. A file that cannot be parsed is moved aside (``.corrupt-<time>``) with a warning
    rather than stopping the daemon.
    """

    def __init__(self, path: Path) -> None:
        """Use ``path`` (read lazily on first access)."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], RunnerSettings] | None = None

    def _load(self) -> dict[tuple[str, str], RunnerSettings]:
        if self._entries is not None:
            return self._entries
        entries: dict[tuple[str, str], RunnerSettings] = {}
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raw = None
        except OSError as ex:
            raise StoreError(
                f"cannot read runner settings {str(self.path)!r}: {ex.strerror}; check its "
                f"permissions"
            ) from ex
        if raw is not None:
            try:
                data = json.loads(raw)
                for item in data["configs"]:
                    try:
                        settings = RunnerSettings.from_json(item)
                    except InvalidRequestError as ex:
                        # Flags an older version accepted and this one refuses (``--flag=value``,
                        # verbose logging): drop that entry, keep the others.
                        log.warning(
                            "runner settings dropped, no longer accepted model=%s reason=%s",
                            item.get("model_id"), ex.message,
                        )  # fmt: skip
                        continue
                    entries[(str(item["model_id"]), settings.mode)] = settings
            except (ValueError, KeyError, TypeError, InvalidRequestError) as ex:
                aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
                log.warning(
                    "runner settings unreadable, moved aside path=%s aside=%s error=%s",
                    self.path,
                    aside,
                    ex,
                )
                try:
                    os.replace(self.path, aside)
                except OSError as move_ex:
                    log.warning("cannot move runner settings aside error=%s", move_ex)
                entries = {}
        self._entries = entries
        return entries

    def _save(self, entries: dict[tuple[str, str], RunnerSettings]) -> None:
        body = {
            "version": _FILE_VERSION,
            "configs": [
                {"model_id": model_id, **settings.to_json()}
                for (model_id, _mode), settings in sorted(entries.items())
            ],
        }
        data = (json.dumps(body, indent=2) + "\n").encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data, mode=0o644)
        except OSError as ex:
            raise StoreError(
                f"cannot write runner settings {str(self.path)!r}: {ex.strerror}; check free "
                f"space and permissions"
            ) from ex

    def get(self, model_id: str, mode: str) -> RunnerSettings | None:
        """Return the settings of ``model_id`` in ``mode``, or ``None``."""
        with self._lock:
            return self._load().get((model_id, mode))

    def put(self, model_id: str, settings: RunnerSettings) -> bool:
        """Store ``settings`` for ``model_id`` and ``settings.mode``; return whether it changed.

        Raises:
            StoreError: The file cannot be written (the old settings stay in effect).
        """
        with self._lock:
            entries = self._load()
            key = (model_id, settings.mode)
            if entries.get(key) == settings:
                return False
            updated = {**entries, key: settings}
            self._save(updated)
            self._entries = updated
            return True

    def delete(self, model_id: str, mode: str | None = None) -> int:
        """Forget the settings of ``model_id`` (one mode or all); return how many went."""
        with self._lock:
            entries = self._load()
            updated = {
                key: value
                for key, value in entries.items()
                if not (key[0] == model_id and (mode is None or key[1] == mode))
            }
            removed = len(entries) - len(updated)
            if removed:
                self._save(updated)
                self._entries = updated
            return removed

    def items(self) -> list[tuple[str, RunnerSettings]]:
        """Return every (model ID, settings) pair, sorted by model ID then mode."""
        with self._lock:
            return [(key[0], value) for key, value in sorted(self._load().items())]
