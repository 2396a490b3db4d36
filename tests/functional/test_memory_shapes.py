"""The memory estimate against the real llama-server on model shapes beyond SmolLM2.

Each synthetic shape (:mod:`tests.support.gguf_shapes`) is started with the argv a runner gets
(prompt cache sized from its KV cache) plus ``-lv 4``, which makes llama-server print its buffers.
Every part of the estimate must match the engine's own figure, and the estimate (less the
prompt cache, which one prompt barely uses) must be within 20 % of the runner's RSS after a
700-token prompt.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.memory.estimate import MemoryEstimate
from orchestrator.memory.footprint import measure_footprint
from orchestrator.memory.guard import MemoryGuard, RamReading
from orchestrator.runners.llamacpp import build_argv
from orchestrator.runners.memoryplan import MemoryPlanner, prompt_cache_mib_for
from tests.fakes.store_stub import StubBundle
from tests.support.engine_http import engine_status
from tests.support.gguf_shapes import SHAPES, Shape, write_shape
from tests.support.processes import stop_process, wait_until

pytestmark = pytest.mark.llama_server

MiB = 1024**2
GiB = 1024**3
CONTEXT = 4096


@pytest.fixture(scope="module")
def shape_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def _logged_mib(text: str, what: str) -> float:
    """Return the sum of every ``<what> buffer size = N MiB`` line of a llama-server log."""
    return sum(float(v) for v in re.findall(rf"{what} buffer size\s*=\s*([\d.]+) MiB", text))


@pytest.fixture
def engines() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Collect the engines a test starts; each is stopped (TERM, wait, KILL) afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        stop_process(proc)


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_estimate_matches_the_engine_buffers_and_rss(
    shape: Shape,
    shape_dir: Path,
    smollm2_gguf: Path,
    llama_server_bin: Path,
    engines: list[subprocess.Popen[bytes]],
) -> None:
    """KV cache, compute and weights as llama-server prints them; the total within 20 % of RSS."""
    path = write_shape(shape, shape_dir / f"{shape.name}.gguf", smollm2_gguf)
    sock = str(shape_dir / f"{shape.name}.sock")
    bundle = StubBundle(root=shape_dir, gguf_path=path, config={"context_size": CONTEXT})
    planner = MemoryPlanner(
        guard=MemoryGuard(ram_probe=lambda: RamReading(64 * GiB, 60 * GiB), gpu_probe=list)
    )

    def plan(prompt_cache_mib: int) -> tuple[list[str], MemoryEstimate]:
        argv = build_argv(
            engine_path=llama_server_bin, bundle=bundle, mode="completion", socket_path=sock,
            prompt_cache_mib=prompt_cache_mib,
        )  # fmt: skip
        return argv, planner.plan(f"sha256:{shape.name}", bundle, argv, Path(sock)).estimate

    argv, predicted = plan(512)
    argv, predicted = plan(prompt_cache_mib_for(predicted, 512))
    log_path = shape_dir / f"{shape.name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*argv, "-lv", "4"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    engines.append(proc)
    ready = wait_until(
        lambda: proc.poll() is not None or engine_status(sock, "GET", "/health") == 200, timeout=120
    )
    assert ready and proc.poll() is None, log_path.read_text()[-2000:]
    prompt = " ".join(f"w{i}" for i in range(700))  # more than one micro-batch
    assert engine_status(sock, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": 8}, 120) == 200
    footprint = measure_footprint(proc.pid)
    assert footprint is not None
    stop_process(proc)
    text = log_path.read_text()
    ram = predicted.ram
    logged = {
        "kv": _logged_mib(text, "KV"),
        "compute": _logged_mib(text, "compute") + _logged_mib(text, "output"),
        "weights": _logged_mib(text, "model"),
    }
    print(
        f"{shape.name}: KV {ram.kv_cache / MiB:.2f}/{logged['kv']:.2f} MiB, compute "
        f"{ram.compute_buffer / MiB:.2f}/{logged['compute']:.2f}, weights "
        f"{ram.weights / MiB:.1f}/{logged['weights']:.1f}, total {ram.total / MiB:.1f} "
        f"(prompt cache {ram.prompt_cache / MiB:.0f}) vs RSS {footprint.rss_bytes / MiB:.1f} MiB"
    )
    assert ram.kv_cache / MiB == pytest.approx(logged["kv"], abs=0.01)
    assert ram.compute_buffer / MiB == pytest.approx(logged["compute"], rel=0.05)
    assert ram.weights / MiB == pytest.approx(logged["weights"], rel=0.01)
    # One prompt leaves the prompt cache nearly empty: it is compared here without it (it fills
    # to its limit over many prompts: test_memory_admission's twenty-prompt test counts it).
    engine_part = ram.total - ram.prompt_cache
    assert abs(engine_part - footprint.rss_bytes) <= 0.2 * footprint.rss_bytes
