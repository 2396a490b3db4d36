"""Engine crashes at load: explain them in a user's words, and do not repeat them.

A runner killed by SIGILL, SIGBUS or SIGSEGV before it was ready did not run out of memory or
meet a bad request: the engine binary and this CPU (or this model file) do not get along, and
spawning it again gives the same crash after the same load time. So the first crash is turned
into an :class:`EngineCrashedError` that names the cause and the fix, and it is remembered:

- SIGILL (an instruction this CPU does not execute) concerns every model: every later start
  fails at once with the same error until the engine binary changes (a rebuild replaces it: new
  inode, size or time) or the daemon restarts with another engine;
- SIGBUS and SIGSEGV may be one model's file (truncated or rewritten while mapped) or an engine
  bug that one model triggers: only that model is refused, for :data:`MODEL_CRASH_HOLD_SECONDS`.

``/engines/status`` (``docker model status``) shows an engine-wide crash.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator import logfiles
from orchestrator.errors import EngineCrashedError

MODEL_CRASH_HOLD_SECONDS = 300.0
"""How long a model whose load crashed the engine (SIGBUS/SIGSEGV) is refused without a retry."""

REBUILD_FIX = (
    "run `make engine` (bin/provision-engine), which proves each build by generating tokens on "
    "this CPU and falls back to fewer instruction sets, then restart the daemon; with the "
    "packaged engine, build one that way and set LLAMA_SERVER_PATH to its directory in "
    "/etc/default/docker-model-runner"
)

EXPLANATIONS: dict[int, str] = {
    signal.SIGILL: (
        "llama-server was killed by SIGILL (illegal instruction) while loading {label}: this "
        "engine build uses an instruction set the CPU advertises but does not execute (AMX or "
        "AVX-512 on some cloud VMs; AVX2 on older CPUs). Fix: " + REBUILD_FIX + ". As a stopgap, "
        "LLAMA_ARG_REPACK=0 in the daemon's environment skips the repacked (AMX) CPU kernels"
    ),
    signal.SIGBUS: (
        "llama-server was killed by SIGBUS (bus error) while loading {label}: the model file "
        "was truncated or rewritten while the engine mapped it, or the engine uses an "
        "instruction this CPU does not honour. Fix: pull the model again (docker model pull); "
        "if it happens with every model, " + REBUILD_FIX
    ),
    signal.SIGSEGV: (
        "llama-server crashed with SIGSEGV (segmentation fault) while loading {label}: on some "
        "VMs a CPU instruction the hypervisor traps (AMX's ldtilecfg) ends this way; otherwise "
        "an engine bug that this model triggers, or a damaged model file. Fix: if it happens "
        "with every model, " + REBUILD_FIX + "; else pull the model again (docker model pull)"
    ),
}
ENGINE_WIDE = frozenset({signal.SIGILL})


def explain_crash(signum: int, label: str) -> str | None:
    """Return the user's explanation of a load-time death by ``signum``, or ``None``."""
    template = EXPLANATIONS.get(signum)
    return None if template is None else template.format(label=label)


@dataclass(frozen=True)
class EngineIdentity:
    """What changes when the engine binary is rebuilt or replaced."""

    path: str
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> EngineIdentity:
        """Return the identity of ``path`` (zeros when it cannot be read)."""
        try:
            info = os.stat(path)
        except OSError:
            return cls(str(path), 0, 0, 0)
        return cls(str(path), info.st_ino, info.st_size, info.st_mtime_ns)


@dataclass(frozen=True)
class Crash:
    """One remembered crash."""

    error: EngineCrashedError
    engine: EngineIdentity
    model_id: str
    at_monotonic: float
    at_wall: str


class CrashMemory:
    """Remembers load-time engine crashes and refuses what would crash the same way."""

    def __init__(
        self, engine_path: Path, *, hold_seconds: float = MODEL_CRASH_HOLD_SECONDS
    ) -> None:
        self._engine_path = Path(engine_path)
        self._hold_seconds = hold_seconds
        self._lock = threading.Lock()
        self._engine_crash: Crash | None = None
        self._model_crashes: dict[str, Crash] = {}

    def record(self, signum: int, model_id: str, error: EngineCrashedError) -> None:
        """Remember that loading ``model_id`` killed the engine with ``signum``."""
        crash = Crash(
            error=error,
            engine=EngineIdentity.of(self._engine_path),
            model_id=model_id,
            at_monotonic=time.monotonic(),
            at_wall=logfiles.format_timestamp(),
        )
        with self._lock:
            if signum in ENGINE_WIDE:
                self._engine_crash = crash
            else:
                self._model_crashes[model_id] = crash

    def engine_crash(self) -> Crash | None:
        """Return the engine-wide crash still in force, if any.

        It is forgotten once the binary changes.
        """
        with self._lock:
            crash = self._engine_crash
            if crash is not None and crash.engine != EngineIdentity.of(self._engine_path):
                self._engine_crash = crash = None
            return crash

    def check(self, model_id: str) -> None:
        """Raise the remembered error instead of starting a runner that would crash again.

        Raises:
            EngineCrashedError: An engine-wide crash, or this model's recent crash, is in force.
        """
        crash = self.engine_crash()
        if crash is None:
            with self._lock:
                crash = self._model_crashes.get(model_id)
                if crash is not None and (
                    time.monotonic() - crash.at_monotonic >= self._hold_seconds
                    or crash.engine != EngineIdentity.of(self._engine_path)
                ):
                    del self._model_crashes[model_id]
                    crash = None
        if crash is None:
            return
        details = dict(crash.error.details)
        details["crashed_at"] = crash.at_wall
        raise EngineCrashedError(
            f"{crash.error.message} (not retried: it crashed the same way at {crash.at_wall})",
            details=details,
        )
