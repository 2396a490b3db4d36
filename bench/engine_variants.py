"""Tokens/s of the engine builds on this machine, side by side in one run.

Compares every CPU build in the provisioning cache (``native``, ``no-amx``, ...), the native build
with ``--no-repack`` (the run-time way around the AMX kernels), and any extra llama-server given
with ``--extra NAME=PATH`` (e.g. a GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS build). Each build
runs the provisioner's proof (same prompt, greedy, exactly ``--tokens`` tokens) ``--rounds``
times, interleaved so that machine noise spreads evenly; the table shows medians and the ratio to
the chosen build. Builds that crash show how they died.

Usage: .venv/bin/python -m bench.engine_variants [--rounds 5] [--tokens 128] [--extra NAME=PATH]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

from orchestrator.engine import choose_engine
from orchestrator.enginebuild import build_records
from orchestrator.enginebuild.proof import prove

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    """Run the comparison; return the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args()
    model = Path(subprocess.run([str(REPO / "bin/provision-model")], capture_output=True, text=True,
                                check=True).stdout.split()[-1])
    chosen = choose_engine("", gpus=list).path  # gpus=list: no GPU, compare the CPU builds
    candidates: list[tuple[str, Path, tuple[str, ...]]] = []
    cache_root = build_records.engine_cache_root()
    for build in build_records.cached_builds(cache_root, build_records.FLAVOR_CPU):
        candidates.append((build.record.variant, build.server, ()))
        if build.record.variant == "native":
            candidates.append(("native --no-repack", build.server, ("--no-repack",)))
    for item in args.extra:
        name, _, path = item.partition("=")
        candidates.append((name, Path(path), ()))
    speeds: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in candidates}
    failures: dict[str, str] = {}
    for _ in range(args.rounds):
        for name, server, extra in candidates:
            if name in failures:
                continue
            result = prove(server, model, extra_args=extra, predict_tokens=args.tokens)
            if result.ok:
                speeds[name].append((result.tokens_per_second, result.prompt_tokens_per_second))
            else:
                failures[name] = result.detail
    reference = next(
        (name for name, server, extra in candidates if server == chosen and not extra), None
    )
    ref_speed = (
        statistics.median(s for s, _ in speeds[reference])
        if reference and speeds[reference]
        else 0.0
    )
    print(
        f"model {model.name}, {args.tokens} tokens, {args.rounds} rounds; "
        f"chosen build: {reference}"
    )
    print(f"{'build':<24} {'gen tok/s':>10} {'prompt tok/s':>13} {'vs chosen':>10}")
    for name, _, _ in candidates:
        if name in failures:
            print(f"{name:<24} {'—':>10} {'—':>13} {failures[name]}")
            continue
        generation = statistics.median(s for s, _ in speeds[name])
        prompt = statistics.median(p for _, p in speeds[name])
        ratio = f"{generation / ref_speed:.3f}" if ref_speed else "—"
        print(f"{name:<24} {generation:>10.1f} {prompt:>13.1f} {ratio:>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
