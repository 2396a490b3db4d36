"""Lifecycle states of one runner and the transitions allowed between them.

Supervisor's ``states.py`` idea: the vocabulary lives in a module that imports nothing but the
error root, and every state change in ``process.py`` goes through :func:`transition`, annotated
where it happens (``# LOADING -> READY``)::

    STARTING -> LOADING -> READY -> STOPPING -> STOPPED
       \\           \\          \\
        `-----------`----------`--> FAILED (exited on its own; kept for one log line, then removed)

``STARTING`` may also go straight to ``STOPPING`` (a stop that arrives before the spawn), and
``STOPPING`` ends in ``STOPPED`` whatever the exit status: we asked for it.
"""

from __future__ import annotations

import enum

from orchestrator.errors import OrchestratorError


class RunnerState(enum.Enum):
    """Where one llama-server process is in its life."""

    STARTING = "starting"
    """Created; the process is not spawned yet."""
    LOADING = "loading"
    """Spawned; ``/health`` does not answer 200 yet."""
    READY = "ready"
    """``/health`` answered 200; requests may be proxied."""
    STOPPING = "stopping"
    """The daemon asked it to stop (SIGTERM sent, SIGKILL may follow)."""
    STOPPED = "stopped"
    """Exited after the daemon asked it to stop; reaped."""
    FAILED = "failed"
    """Exited without being asked (crash, load failure, OOM kill); reaped."""

    @property
    def is_final(self) -> bool:
        """Return whether no transition leaves this state."""
        return not ALLOWED_TRANSITIONS[self]

    @property
    def is_running(self) -> bool:
        """Return whether a process may exist in this state (spawned, not reaped)."""
        return self in (RunnerState.LOADING, RunnerState.READY, RunnerState.STOPPING)


ALLOWED_TRANSITIONS: dict[RunnerState, frozenset[RunnerState]] = {
    RunnerState.STARTING: frozenset(
        {RunnerState.LOADING, RunnerState.STOPPING, RunnerState.FAILED}
    ),
    RunnerState.LOADING: frozenset({RunnerState.READY, RunnerState.STOPPING, RunnerState.FAILED}),
    RunnerState.READY: frozenset({RunnerState.STOPPING, RunnerState.FAILED}),
    RunnerState.STOPPING: frozenset({RunnerState.STOPPED}),
    RunnerState.STOPPED: frozenset(),
    RunnerState.FAILED: frozenset(),
}


def can_transition(current: RunnerState, new: RunnerState) -> bool:
    """Return whether ``current -> new`` is an allowed transition."""
    return new in ALLOWED_TRANSITIONS[current]


def transition(current: RunnerState, new: RunnerState) -> RunnerState:
    """Check ``current -> new`` and return ``new``.

    Every state change of a runner goes through here, so an impossible change (a bug) fails
    loudly at the place it happens instead of leaving a runner in a state nobody handles.

    Raises:
        OrchestratorError: The transition is not in :data:`ALLOWED_TRANSITIONS`.
    """
    if new not in ALLOWED_TRANSITIONS[current]:
        raise OrchestratorError(
            f"runner state cannot change from {current.value!r} to {new.value!r}; "
            f"this is a bug, please report it with the daemon log"
        )
    return new
