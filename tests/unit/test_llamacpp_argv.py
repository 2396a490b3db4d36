"""llama-server argv: golden files per case, and the runtime-flag allow-list.

Golden files live in ``tests/data/argv/<case>.txt``, one argument per line. After an intended
change, regenerate them with ``UPDATE_GOLDEN=1 pytest tests/unit/test_llamacpp_argv.py`` and
review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import InvalidRequestError
from orchestrator.runners.engineflags import (
    ALLOWED_FLAGS,
    MANAGED_FLAGS,
    MEMORY_FLAGS,
    engine_options,
    validate_runtime_flags,
)
from orchestrator.runners.llamacpp import build_argv, context_size_for, pooling_for
from orchestrator.runners.persisted import RunnerSettings
from tests.fakes.store_stub import StubBundle

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "argv"
ENGINE = "/opt/llama/llama-server"
SOCKET = "/run/model-runner/runners/c1-0123abcd.sock"
BUNDLE_DIR = Path("/models/bundles/sha256/0123abcd/model")


def _bundle(config: dict[str, Any] | None = None, *, template: bool = False, mmproj: bool = False) -> StubBundle:
    return StubBundle(
        root=BUNDLE_DIR.parent,
        gguf_path=BUNDLE_DIR / "model.gguf",
        mmproj_path=BUNDLE_DIR / "model.mmproj" if mmproj else None,
        chat_template_path=BUNDLE_DIR / "template.jinja" if template else None,
        config=config or {},
    )


BERT_CONFIG = {
    "architecture": "bert",
    "gguf": {"general.architecture": "bert", "bert.pooling_type": "2"},
}

CASES: dict[str, dict[str, Any]] = {
    "completion_default": {"bundle": _bundle(), "mode": "completion"},
    "configured_ctx": {
        "bundle": _bundle({"context_size": 2048}),
        "mode": "completion",
        "settings": RunnerSettings(context_size=8192),
    },
    "model_ctx": {"bundle": _bundle({"context_size": 16384}), "mode": "completion"},
    "template": {"bundle": _bundle(template=True), "mode": "completion"},
    "mmproj": {"bundle": _bundle(template=True, mmproj=True), "mode": "completion"},
    "embedding": {"bundle": _bundle(BERT_CONFIG), "mode": "embedding"},
    "embedding_default_pooling": {"bundle": _bundle({"architecture": "llama"}), "mode": "embedding"},
    "reranking": {"bundle": _bundle(template=True), "mode": "reranking"},
    "runtime_flags": {
        "bundle": _bundle({"context_size": 2048}),
        "mode": "completion",
        "settings": RunnerSettings(
            runtime_flags=("--temp", "0.7", "--threads=4", "--top-k", "20"),
            reasoning_budget=-1,
        ),
    },
}


def _argv(case: dict[str, Any]) -> list[str]:
    return build_argv(
        engine_path=ENGINE,
        bundle=case["bundle"],
        mode=case["mode"],
        socket_path=SOCKET,
        settings=case.get("settings"),
        default_context_size=4096,
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_argv_matches_golden_file(name: str) -> None:
    argv = _argv(CASES[name])
    golden = GOLDEN_DIR / f"{name}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text("\n".join(argv) + "\n", encoding="utf-8")
    assert golden.is_file(), f"missing golden file {golden}; run with UPDATE_GOLDEN=1"
    assert argv == golden.read_text(encoding="utf-8").splitlines()


def test_every_golden_file_has_a_case() -> None:
    assert sorted(path.stem for path in GOLDEN_DIR.glob("*.txt")) == sorted(CASES)


def test_argv_always_has_socket_ctx_metrics_and_no_webui() -> None:
    for case in CASES.values():
        argv = _argv(case)
        assert argv[0] == ENGINE
        assert argv[argv.index("--host") + 1] == SOCKET
        assert "--metrics" in argv and "--no-webui" in argv
        assert argv.count("--ctx-size") == 1
        assert ("--jinja" in argv) != ("--mmproj" in argv)


def test_runtime_flags_come_after_ctx_size_so_they_win() -> None:
    settings = RunnerSettings(runtime_flags=("--ctx-size", "512"))
    argv = build_argv(engine_path=ENGINE, bundle=_bundle(), mode="completion", socket_path=SOCKET, settings=settings)
    positions = [index for index, arg in enumerate(argv) if arg == "--ctx-size"]
    assert len(positions) == 2 and argv[positions[-1] + 1] == "512"


def test_configured_pooling_replaces_the_models() -> None:
    settings = RunnerSettings(runtime_flags=("--pooling", "last"), mode="embedding")
    argv = build_argv(engine_path=ENGINE, bundle=_bundle(BERT_CONFIG), mode="embedding", socket_path=SOCKET, settings=settings)
    assert argv.count("--pooling") == 1 and argv[argv.index("--pooling") + 1] == "last"


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(InvalidRequestError) as info:
        build_argv(engine_path=ENGINE, bundle=_bundle(), mode="image-generation", socket_path=SOCKET)
    assert info.value.param == "mode"


@pytest.mark.parametrize(
    ("configured", "model", "expected"),
    [
        (None, None, 4096),
        (None, 2048, 2048),
        (8192, 2048, 8192),
        (-1, 2048, 0),
        (None, -1, 0),
        (None, 0, 4096),
        (None, "bogus", 4096),
        (None, True, 4096),
    ],
)
def test_context_size_order(configured: int | None, model: object, expected: int) -> None:
    config = {} if model is None else {"context_size": model}
    settings = RunnerSettings(context_size=configured) if configured is not None else None
    assert context_size_for(config, settings, 4096) == expected


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, "mean"),
        ({"gguf": {"general.architecture": "bert", "bert.pooling_type": "2"}}, "cls"),
        ({"architecture": "qwen3", "gguf": {"qwen3.pooling_type": "3"}}, "last"),
        ({"architecture": "bert", "gguf": {"bert.pooling_type": "4"}}, "rank"),
        ({"architecture": "bert", "gguf": {"bert.pooling_type": "0"}}, "mean"),
        ({"architecture": "bert", "gguf": "not a map"}, "mean"),
    ],
)
def test_pooling_from_model_config(config: dict[str, Any], expected: str) -> None:
    assert pooling_for(config) == expected


ACCEPTED_FLAGS = [
    ["--temp", "0.7"],
    ["--threads", "4"],
    ["--reasoning-budget", "-1"],
    ["--seed", "-1"],
    ["-cram", "0", "--threads-http", "8", "--prio", "2", "--prio-batch", "0"],
    ["--rope-freq-scale", "-0.5"],
    ["-ngl", "0", "-fa", "on"],
    ["--jinja", "--chat-template", "chatml", "--no-webui"],
    ["--ignore-eos", "--keep", "-1", "--metrics"],
    ["--chat-template-kwargs", '{"enable_thinking": false}'],
    [],
]


@pytest.mark.parametrize("flags", ACCEPTED_FLAGS, ids=lambda flags: " ".join(flags) or "empty")
def test_accepted_runtime_flags(flags: list[str]) -> None:
    assert validate_runtime_flags(flags) == tuple(flags)


REJECTED_FLAGS = [
    (["--model", "x.gguf"], "daemon sets it"),
    (["-m", "x.gguf"], "daemon sets it"),
    (["--host", "0.0.0.0"], "daemon sets it"),
    (["--port", "8080"], "daemon sets it"),
    (["--mmproj", "x"], "daemon sets it"),
    (["--chat-template-file", "t.jinja"], "daemon sets it"),
    (["--temp", "/tmp/x"], "paths are not allowed"),
    (["--log-file", "out.log"], "allow-list"),
    (["--grammar", "..\\x"], "paths are not allowed"),
    (["--slot-save-path=state"], "allow-list"),
    (["--api-key", "secret"], "allow-list"),
    (["--api-prefix", "v2"], "allow-list"),
    (["--lora", "adapter"], "allow-list"),
    (["-hf", "org"], "allow-list"),
    (["--bogus"], "allow-list"),
    (["--seed=--log-file=x"], "two items"),  # llama-server has no --flag=value form
    (["--seed=-l"], "two items"),
    (["--threads=4"], "two items"),
    (["-v"], "allow-list"),  # verbose logging writes every prompt and answer into /logs
    (["--verbose"], "allow-list"),
    (["-lv", "4"], "allow-list"),
    (["--log-verbosity", "4"], "allow-list"),
    (["-cram", "-1"], "from 0 to"),  # unlimited: nothing to budget
    (["--threads-http", "1000000"], "from 1 to 64"),
    (["--prio", "3"], "from -1 to 2"),  # realtime
    (["--prio"], "no value"),
    (["--cache-ram", "lots"], "'lots'"),
    (["--threads=4\x00"], "NUL"),
    ([7], "must be strings"),
    # A trailing value flag would swallow the next flag as its value.
    (["--chat-template", "--jinja"], "the flag '--jinja' follows it"),
    (["--chat-template"], "no value follows it"),
    (["--temp"], "no value follows it"),
    (["--jinja", "chatml"], "follows no flag"),  # a stray value: the runner would not start
    (["0.7", "--temp"], "follows no flag"),
    (["--temp", "0.7", "0.8"], "follows no flag"),
]


@pytest.mark.parametrize(("flags", "why"), REJECTED_FLAGS, ids=lambda value: repr(value)[:40])
def test_rejected_runtime_flags(flags: list[object], why: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        validate_runtime_flags(flags)
    assert info.value.param == "runtime-flags"
    assert why in info.value.message


def test_allow_list_has_no_daemon_managed_flags() -> None:
    assert not ALLOWED_FLAGS & {"-m", "--model", "--host", "--port", "--api-key", "--mmproj", "--log-file"}


def test_every_memory_flag_spelling_is_allowed_or_managed() -> None:
    """One table: what the estimate reads back is what a user may set (or the daemon sets)."""
    for flag in MEMORY_FLAGS:
        for spelling in flag.spellings:
            assert spelling in ALLOWED_FLAGS or spelling in MANAGED_FLAGS, spelling


def test_the_estimate_reads_back_what_build_argv_wrote() -> None:
    bundle = StubBundle(root=BUNDLE_DIR, gguf_path=BUNDLE_DIR / "model.gguf", config={})
    settings = RunnerSettings(context_size=2048, runtime_flags=("-np", "2", "--cache-ram", "64", "-no-kvu"))
    argv = build_argv(engine_path=ENGINE, bundle=bundle, mode="completion", socket_path=SOCKET, settings=settings)
    options = engine_options(argv)
    assert options["context_size"] == "2048"
    assert options["parallel"] == "2"
    assert options["cache_ram"] == "64"  # the user's flag comes after the daemon's and wins
    assert options["kv_unified"] is False
    assert options["gpu_layers"] == "999"
