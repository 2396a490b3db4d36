"""_configure parsing (DMR's mixed keys) and the persisted settings store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import (
    InvalidRequestError,
    OrchestratorError,
)
from orchestrator.runners.persisted import (
    RunnerConfigStore,
    RunnerSettings,
    parse_configure_request,
)
from orchestrator.runners.speculative import SpeculativeSettings

MODEL = "ai/smollm2"


def test_full_request_with_mixed_key_styles() -> None:
    request = parse_configure_request(
        {
            "model": " ai/smollm2 ",
            "mode": "completion",
            "context-size": 8192,
            "runtime-flags": ["--temp", "0.7"],
            "raw-runtime-flags": "--top-k 5",
            "keep_alive": "10m",
            "llamacpp": {"reasoning-budget": 0},
            "vllm": {"gpu-memory-utilization": 0.9},
            "unknown": True,
        }
    )
    assert request.model == "ai/smollm2"
    assert request.settings == RunnerSettings(
        context_size=8192,
        runtime_flags=("--temp", "0.7"),
        keep_alive=600.0,
        mode="completion",
        reasoning_budget=0,
    )


def test_raw_runtime_flags_are_shell_split_when_no_list() -> None:
    request = parse_configure_request({"model": MODEL, "raw-runtime-flags": "--temp 0.7 --chat-template-kwargs '{\"a\": 1}'"})
    assert request.settings.runtime_flags == ("--temp", "0.7", "--chat-template-kwargs", '{"a": 1}')


def test_empty_runtime_flags_list_falls_back_to_raw() -> None:
    request = parse_configure_request({"model": MODEL, "runtime-flags": [], "raw-runtime-flags": "--temp 1"})
    assert request.settings.runtime_flags == ("--temp", "1")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("0", 0.0), ("-1", -1.0), ("-5m", -1.0), (90, 90.0), (None, None), ("", None)],
)
def test_keep_alive_durations(value: object, seconds: float | None) -> None:
    assert parse_configure_request({"model": MODEL, "keep_alive": value}).settings.keep_alive == seconds


@pytest.mark.parametrize(("flags", "mode"), [(["--embeddings"], "embedding"), (["--temp", "1"], "completion"), ([], "completion")])
def test_mode_defaults_from_flags(flags: list[str], mode: str) -> None:
    assert parse_configure_request({"model": MODEL, "runtime-flags": flags}).settings.mode == mode


@pytest.mark.parametrize(("value", "expected"), [(4096, 4096), (-1, -1), (0, None), (None, None), ("2048", 2048), (2048.0, 2048)])
def test_context_size_values(value: object, expected: int | None) -> None:
    assert parse_configure_request({"model": MODEL, "context-size": value}).settings.context_size == expected


BAD_REQUESTS: list[tuple[Any, str | None]] = [
    ([], None),
    ({}, "model"),
    ({"model": ""}, "model"),
    ({"model": 5}, "model"),
    ({"model": MODEL, "context-size": True}, "context-size"),
    ({"model": MODEL, "context-size": "big"}, "context-size"),
    ({"model": MODEL, "context-size": -5}, "context-size"),
    ({"model": MODEL, "context-size": 2**31}, "context-size"),
    ({"model": MODEL, "context-size": 1.5}, "context-size"),
    ({"model": MODEL, "runtime-flags": "--temp 1"}, "runtime-flags"),
    ({"model": MODEL, "runtime-flags": ["--model", "x"]}, "runtime-flags"),
    ({"model": MODEL, "raw-runtime-flags": "--log-file /etc/passwd"}, "runtime-flags"),
    ({"model": MODEL, "raw-runtime-flags": "--temp 'unclosed"}, "raw-runtime-flags"),
    ({"model": MODEL, "raw-runtime-flags": ["--temp"]}, "raw-runtime-flags"),
    ({"model": MODEL, "keep_alive": "soon"}, "keep_alive"),
    ({"model": MODEL, "keep_alive": True}, "keep_alive"),
    ({"model": MODEL, "mode": "image-generation"}, "mode"),
    ({"model": MODEL, "llamacpp": "x"}, "llamacpp"),
    ({"model": MODEL, "llamacpp": {"reasoning-budget": "lots"}}, "reasoning-budget"),
    ({"model": MODEL, "speculative": "ai/x"}, "speculative"),
    ({"model": MODEL, "speculative": {"num_tokens": 4}}, "speculative.draft_model"),
    ({"model": MODEL, "speculative": {"draft_model": 7}}, "speculative.draft_model"),
    ({"model": MODEL, "speculative": {"draft_model": "ai/x", "num_tokens": -1}}, "speculative.num_tokens"),
    ({"model": MODEL, "speculative": {"draft_model": "ai/x", "num_tokens": 4.5}}, "speculative.num_tokens"),
    ({"model": MODEL, "speculative": {"draft_model": "ai/x", "num_tokens": 5000}}, "speculative.num_tokens"),
    ({"model": MODEL, "speculative": {"draft_model": "ai/x", "min_acceptance_rate": 1.5}}, "speculative.min_acceptance_rate"),
    ({"model": MODEL, "speculative": {"draft_model": "ai/x", "min_acceptance_rate": "high"}}, "speculative.min_acceptance_rate"),
    ({"model": MODEL, "mode": "embedding", "speculative": {"draft_model": "ai/x"}}, "speculative"),
]


@pytest.mark.parametrize(("body", "param"), BAD_REQUESTS, ids=lambda value: repr(value)[:50])
def test_bad_requests_name_the_parameter(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_configure_request(body)
    assert info.value.param == param
    assert info.value.status == 400


def test_speculative_is_parsed_into_the_settings_unresolved() -> None:
    body = {"model": MODEL, "speculative": {"draft_model": " ai/x ", "num_tokens": 8}}
    speculative = parse_configure_request(body).settings.speculative
    assert speculative == SpeculativeSettings(draft_model="ai/x", num_tokens=8)
    assert speculative.draft_model_id == ""  # the route resolves it against the store


def test_speculative_settings_survive_the_store_and_show_in_dmr_shape(tmp_path: Path) -> None:
    speculative = SpeculativeSettings("ai/x", "sha256:" + "a" * 64, 16, 0.8)
    settings = RunnerSettings(context_size=2048, speculative=speculative)
    RunnerConfigStore(tmp_path / "c.json").put("sha256:" + "b" * 64, settings)
    again = RunnerConfigStore(tmp_path / "c.json").get("sha256:" + "b" * 64, "completion")
    assert again == settings
    assert settings.to_api()["speculative"] == {
        "draft_model": "ai/x",
        "num_tokens": 16,
        "min_acceptance_rate": 0.8,
    }
    assert not settings.same_process(RunnerSettings(context_size=2048))


def test_to_api_uses_dmr_keys_and_omits_unset() -> None:
    assert RunnerSettings().to_api() == {}
    settings = RunnerSettings(context_size=4096, runtime_flags=("--temp", "1"), keep_alive=300.0, reasoning_budget=-1)
    assert settings.to_api() == {
        "context-size": 4096,
        "runtime-flags": ["--temp", "1"],
        "keep_alive": "5m0s",
        "llamacpp": {"reasoning-budget": -1},
    }
    assert RunnerSettings(keep_alive=-1.0).to_api() == {"keep_alive": "-1"}


def test_store_round_trip_survives_a_new_instance(tmp_path: Path) -> None:
    path = tmp_path / "runner-configs.json"
    store = RunnerConfigStore(path)
    completion = RunnerSettings(context_size=8192, runtime_flags=("--temp", "0.5"), keep_alive=0.0)
    embedding = RunnerSettings(mode="embedding", keep_alive=-1.0)
    assert store.put("sha256:aa", completion) is True
    assert store.put("sha256:aa", embedding) is True
    assert store.put("sha256:bb", RunnerSettings(reasoning_budget=10)) is True
    assert store.put("sha256:aa", completion) is False  # unchanged: no rewrite

    reopened = RunnerConfigStore(path)
    assert reopened.get("sha256:aa", "completion") == completion
    assert reopened.get("sha256:aa", "embedding") == embedding
    assert reopened.get("sha256:bb", "completion") == RunnerSettings(reasoning_budget=10)
    assert reopened.get("sha256:bb", "embedding") is None
    assert [model_id for model_id, _ in reopened.items()] == ["sha256:aa", "sha256:aa", "sha256:bb"]

    assert reopened.delete("sha256:aa", "embedding") == 1
    assert reopened.delete("sha256:aa") == 1
    assert RunnerConfigStore(path).items() == [("sha256:bb", RunnerSettings(reasoning_budget=10))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runner-configs.json"]  # no temp files left
    assert json.loads(path.read_text())["version"] == 1


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "runner-configs.json"
    path.write_text("{not json", encoding="utf-8")
    store = RunnerConfigStore(path)
    assert store.items() == []
    assert not path.exists()
    assert len(list(tmp_path.glob("runner-configs.json.corrupt-*"))) == 1
    store.put("sha256:cc", RunnerSettings(context_size=1024))
    assert RunnerConfigStore(path).get("sha256:cc", "completion") == RunnerSettings(context_size=1024)


def test_a_stored_entry_no_longer_allowed_is_dropped_and_the_others_kept(tmp_path: Path) -> None:
    """After an upgrade that tightens the allow-list, only the refused entries go."""
    path = tmp_path / "runner-configs.json"
    refused = [["--log-file", "x"], ["--threads=4"], ["-v"]]
    configs = [{"model_id": f"sha256:d{i}", "mode": "completion", "runtime_flags": flags} for i, flags in enumerate(refused)]
    configs.append({"model_id": "sha256:ok", "mode": "completion", "runtime_flags": ["--temp", "0.5"]})
    path.write_text(json.dumps({"version": 1, "configs": configs}))
    store = RunnerConfigStore(path)
    assert store.items() == [("sha256:ok", RunnerSettings(runtime_flags=("--temp", "0.5")))]
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))  # not treated as corrupt


def test_unwritable_directory_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = RunnerConfigStore(blocker / "runner-configs.json")
    with pytest.raises(OrchestratorError) as info:
        store.put("sha256:ee", RunnerSettings())
    assert info.value.code == "store_error"
    assert str(blocker) in info.value.message
