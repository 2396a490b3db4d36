#!/usr/bin/env bash
# The prepared check for a machine with an NVIDIA GPU (never part of .ci/run; nothing here runs
# without a GPU). In one go:
#
#  1. builds the CUDA engine (`bin/provision-engine --cuda`: GGML_CUDA=ON, architectures
#     80;86;89;90, portable CPU code) and proves it with -ngl 999 on this GPU; or carries one:
#     CUDA_ENGINE_DIR=<dir built elsewhere> skips the build and proves that directory here;
#  2. runs the functional suite against it (runners get -ngl 999, as every runner does);
#  3. starts the daemon on it, answers a chat, and prints tokens/s and, per runner, the VRAM
#     the memory guard estimated next to what NVML measured (bench/gpu_report.py).
#
# Usage: bench/gpu_check.sh            (from the repository root; needs `make venv` first)
# Environment: CUDA_ENGINE_DIR, PYTEST_ARGS (default: tests/functional), PORT (default 12439).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi -L | grep -q '^GPU ' \
    || { echo "gpu-check: no NVIDIA GPU visible (nvidia-smi -L); nothing to check" >&2; exit 2; }
nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv
[[ -x .venv/bin/python ]] || make venv
model="$(bin/provision-model | tail -n 1)"

if [[ -n "${CUDA_ENGINE_DIR:-}" ]]; then
    engine="$CUDA_ENGINE_DIR"
    echo "gpu-check: carried engine ${engine}; proving it here"
    .venv/bin/python - "$engine" "$model" <<'PY'
import sys
from pathlib import Path
from orchestrator.enginebuild.proof import prove
result = prove(Path(sys.argv[1]) / "llama-server", Path(sys.argv[2]), extra_args=("-ngl", "999"))
print("proof:", result.detail)
sys.exit(0 if result.ok else 1)
PY
else
    started=$SECONDS
    engine="$(bin/provision-engine --cuda | tail -n 1)"
    echo "gpu-check: CUDA engine ${engine} ready after $((SECONDS - started)) s"
fi
bin/provision-engine --list | sed -n "\#${engine}#,+3p"

echo "== functional suite against the CUDA engine"
LLAMA_SERVER_PATH="$engine" DMR_TEST_MODEL="$model" \
    .venv/bin/python -m pytest ${PYTEST_ARGS:-tests/functional} -q

echo "== tokens/s and VRAM: estimate vs NVML"
LLAMA_SERVER_PATH="$engine" .venv/bin/python -m bench.gpu_report --model "$model" --port "${PORT:-12439}"
