"""The real engine passes the proof the provisioner runs, and the provisioner's record says so."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from orchestrator.enginebuild import build_records
from orchestrator.enginebuild.proof import prove

REPO = Path(__file__).resolve().parents[2]


def test_the_engine_generates_tokens_with_default_cpu_settings(
    llama_server_bin: Path, smollm2_gguf: Path
) -> None:
    result = prove(llama_server_bin, smollm2_gguf)
    assert result.ok, (result.detail, result.log_tail)
    assert result.tokens_per_second > 0  # a figure, not a benchmark: CPU contention varies it
    assert result.signal is None and result.detail.startswith("32 tokens at ")


def test_the_provisioned_engine_is_proven_on_this_machine(llama_server_bin: Path) -> None:
    # `make test` passes LLAMA_SERVER_PATH="$(bin/provision-engine)": a second run reuses the
    # proven build at once (no build, no proof) and prints the same directory.
    done = subprocess.run(
        [str(REPO / "bin" / "provision-engine")], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    directory = Path(done.stdout.strip().splitlines()[-1])
    assert "proven on this machine" in done.stderr
    record = build_records.read_record(directory)
    assert record is not None
    assert record.proven_on(build_records.this_machine())
    assert (directory / "rpc-server").is_file() and os.access(directory / "rpc-server", os.X_OK)
    configured = os.environ.get("LLAMA_SERVER_PATH")
    if configured:
        assert Path(configured) == directory
