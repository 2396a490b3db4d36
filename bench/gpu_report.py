"""Start the daemon on the engine in ``LLAMA_SERVER_PATH``, chat once, report GPU figures.

Prints the engine the daemon chose (``/engines/status``), generation tokens/s from the answer's
``timings``, and for each runner the VRAM the memory guard estimated next to the VRAM NVML
measured for its process (``/engines/ps``). Used by ``bench/gpu_check.sh`` on a GPU machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

from tests.support.processes import stop_process, wait_until

MIB = 2**20


def main() -> int:
    """Run the report; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="GGUF file to serve")
    parser.add_argument("--port", type=int, default=12439)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(prefix="gpu-report-") as scratch:
        env = {**os.environ, "MODELS_PATH": f"{scratch}/models", "DMR_RUNNER_PORT": str(args.port)}
        bin_dir = Path(sys.executable).parent
        subprocess.run([str(bin_dir / "model-runner"), "package", "--gguf", str(args.model),
                        "ai/smollm2:latest"], env=env, check=True)
        with open(f"{scratch}/daemon.log", "wb") as daemon_log:
            daemon = subprocess.Popen(
                [str(bin_dir / "model-runner"), "serve"], env=env, stdout=subprocess.DEVNULL,
                stderr=daemon_log, start_new_session=True,  # stop_process signals its group
            )
        try:
            if not wait_until(lambda: _up(base), timeout=60):
                print(f"the daemon did not answer within 60 s; see {scratch}/daemon.log")
                return 1
            print("engine:", requests.get(f"{base}/engines/status", timeout=10).json())
            answer = requests.post(f"{base}/engines/v1/chat/completions", timeout=300, json={
                "model": "ai/smollm2", "max_tokens": 128,
                "messages": [{"role": "user", "content": "Write three sentences about the sea."}],
            }).json()
            timings = answer.get("timings", {})
            print(f"generation: {timings.get('predicted_per_second', 0):.1f} tokens/s, prompt: "
                  f"{timings.get('prompt_per_second', 0):.1f} tokens/s")
            for runner in requests.get(f"{base}/engines/ps", timeout=10).json():
                memory = runner.get("memory") or {}
                estimate = (memory.get("estimate") or {}).get("vram", {})
                measured = memory.get("measured") or {}
                estimated = sum(int(v) for v in estimate.values()) if estimate else 0
                print(f"{runner.get('model_name')}: VRAM estimate {estimated / MIB:.0f} MiB "
                      f"({estimate}), NVML measured {int(measured.get('vram', 0)) / MIB:.0f} MiB, "
                      f"RSS {int(measured.get('rss', 0)) / MIB:.0f} MiB")
        finally:
            stop_process(daemon)
    return 0


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/models", timeout=2).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    sys.exit(main())
