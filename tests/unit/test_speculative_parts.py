"""Speculative decoding: the draft model's argv and the memory it adds to its runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import InvalidRequestError
from orchestrator.memory.guard import MemoryGuard, RamReading
from orchestrator.memory.nvml import GpuInfo
from orchestrator.runners.engineflags import engine_options, validate_runtime_flags
from orchestrator.runners.llamacpp import build_argv
from orchestrator.runners.memoryplan import MemoryPlanner
from orchestrator.runners.persisted import RunnerSettings
from orchestrator.runners.speculative import SpeculativeSettings, parse_speculative
from tests.fakes.store_stub import StubBundle

pytest.importorskip("gguf", reason="the gguf package (pip install gguf) writes the test models")
from tests.support.gguf_files import write_llama_model

GiB = 1024**3
SOCKET = Path("/run/model-runner/runners/c1-aaaa.sock")
DRAFT = Path("/models/bundles/sha256/dddd/model/model.gguf")


def _argv(
    bundle: StubBundle, settings: RunnerSettings | None, draft: Path | None = DRAFT
) -> list[str]:
    return build_argv(
        engine_path="/opt/llama-server",
        bundle=bundle,
        mode="completion",
        socket_path=SOCKET,
        settings=settings,
        draft_gguf=draft,
    )


def _bundle(path: Path = Path("/models/bundles/sha256/tttt/model/model.gguf")) -> StubBundle:
    return StubBundle(root=path.parent, gguf_path=path)


def test_draft_arguments_follow_the_engines_spelling_and_precede_runtime_flags() -> None:
    settings = RunnerSettings(
        runtime_flags=("--spec-draft-n-max", "4"),
        speculative=SpeculativeSettings("ai/draft", "sha256:d", 16, 0.8),
    )
    argv = _argv(_bundle(), settings)
    start = argv.index("--model-draft")
    assert argv[start : start + 8] == [
        "--model-draft", str(DRAFT), "--spec-type", "draft-simple",
        "--spec-draft-n-max", "16", "--spec-draft-p-min", "0.80",
    ]  # fmt: skip
    # The user's runtime flag comes later, so llama-server takes it (the last one wins).
    assert max(i for i, arg in enumerate(argv) if arg == "--spec-draft-n-max") > start + 4


def test_zero_sizes_leave_the_engine_defaults() -> None:
    argv = _argv(_bundle(), RunnerSettings(speculative=SpeculativeSettings("ai/draft")))
    assert "--model-draft" in argv and "--spec-type" in argv
    assert "--spec-draft-n-max" not in argv and "--spec-draft-p-min" not in argv


def test_no_draft_without_speculative_settings() -> None:
    argv = _argv(_bundle(), RunnerSettings(context_size=512))
    assert "--model-draft" not in argv and "--spec-type" not in argv


@pytest.mark.parametrize("flag", ["--model-draft", "-md", "--spec-draft-model"])
def test_the_draft_path_cannot_come_from_runtime_flags(flag: str) -> None:
    with pytest.raises(InvalidRequestError, match="the daemon sets it itself"):
        validate_runtime_flags([flag, "x.gguf"])


def test_parse_keeps_dmr_values_and_treats_empty_as_none() -> None:
    assert parse_speculative(None) is None
    assert parse_speculative({}) is None
    parsed = parse_speculative({"draft_model": "ai/d", "num_tokens": 16, "min_acceptance_rate": 1})
    assert parsed == SpeculativeSettings("ai/d", "", 16, 1.0)
    assert parsed is not None and parsed.to_api() == {
        "draft_model": "ai/d",
        "num_tokens": 16,
        "min_acceptance_rate": 1.0,
    }


def test_engine_options_read_the_draft_back() -> None:
    argv = _argv(_bundle(), RunnerSettings(speculative=SpeculativeSettings("ai/d")))
    assert engine_options(argv)["model_draft"] == str(DRAFT)


def _planner(gpus: list[GpuInfo] | None = None) -> MemoryPlanner:
    guard = MemoryGuard(
        ram_probe=lambda: RamReading(64 * GiB, 60 * GiB), gpu_probe=lambda: list(gpus or [])
    )
    return MemoryPlanner(guard=guard)


@pytest.mark.parametrize("on_gpu", [False, True])
def test_the_estimate_counts_the_drafts_weights_kv_and_compute_once(
    tmp_path: Path, on_gpu: bool
) -> None:
    target = write_llama_model(tmp_path / "target.gguf", n_layers=4)
    draft = write_llama_model(tmp_path / "draft.gguf", n_layers=2)
    gpus = [GpuInfo(0, "NVIDIA H200", 140 * GiB, 139 * GiB, 1 * GiB)] if on_gpu else None
    settings = RunnerSettings(context_size=1024, speculative=SpeculativeSettings("ai/d"))
    bundle = _bundle(target)
    plain = _planner(gpus).plan(
        "sha256:t", bundle, _argv(bundle, RunnerSettings(context_size=1024)), SOCKET
    )
    with_draft = _planner(gpus).plan("sha256:t", bundle, _argv(bundle, settings, draft), SOCKET)
    draft_alone = _planner(gpus).plan(
        "sha256:d", _bundle(draft), _argv(_bundle(draft), RunnerSettings(context_size=1024)), SOCKET
    )
    grown, alone = with_draft.estimate, draft_alone.estimate
    assert grown.weights == plain.estimate.weights + alone.weights
    assert grown.kv_cache == plain.estimate.kv_cache + alone.kv_cache
    # The process, its CUDA context and its prompt cache are the target's: counted once.
    assert grown.ram.overhead == plain.estimate.ram.overhead
    assert grown.vram.overhead == plain.estimate.vram.overhead
    assert grown.ram.prompt_cache == plain.estimate.ram.prompt_cache
    assert (grown.vram.weights > plain.estimate.vram.weights) is on_gpu
