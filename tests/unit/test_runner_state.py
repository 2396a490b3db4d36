"""Runner state machine: the allowed transitions and nothing else."""

from __future__ import annotations

import itertools

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.runners.state import (
    ALLOWED_TRANSITIONS,
    RunnerState,
    can_transition,
    transition,
)

S = RunnerState
EXPECTED = {
    (S.STARTING, S.LOADING),
    (S.STARTING, S.STOPPING),
    (S.STARTING, S.FAILED),
    (S.LOADING, S.READY),
    (S.LOADING, S.STOPPING),
    (S.LOADING, S.FAILED),
    (S.READY, S.STOPPING),
    (S.READY, S.FAILED),
    (S.STOPPING, S.STOPPED),
}


@pytest.mark.parametrize(("current", "new"), sorted(EXPECTED, key=str))
def test_allowed_transition_returns_new_state(current: RunnerState, new: RunnerState) -> None:
    assert can_transition(current, new)
    assert transition(current, new) is new


@pytest.mark.parametrize(
    ("current", "new"),
    [pair for pair in itertools.product(RunnerState, RunnerState) if pair not in EXPECTED],
    ids=str,
)
def test_other_transitions_raise(current: RunnerState, new: RunnerState) -> None:
    assert not can_transition(current, new)
    with pytest.raises(OrchestratorError) as info:
        transition(current, new)
    assert current.value in info.value.message and new.value in info.value.message


def test_table_covers_every_state() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(RunnerState)


def test_final_states_are_stopped_and_failed() -> None:
    assert {state for state in RunnerState if state.is_final} == {S.STOPPED, S.FAILED}


def test_every_state_reaches_a_final_state() -> None:
    for start in RunnerState:
        seen, pending = {start}, [start]
        while pending:
            for new in ALLOWED_TRANSITIONS[pending.pop()]:
                if new not in seen:
                    seen.add(new)
                    pending.append(new)
        assert seen & {S.STOPPED, S.FAILED}, start


def test_running_states_are_those_with_a_process() -> None:
    assert {state for state in RunnerState if state.is_running} == {S.LOADING, S.READY, S.STOPPING}
