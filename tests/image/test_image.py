"""The OCI image (`make image`) end to end: `make test-image` builds it and runs this module.

The image in the OCI layout named by DMR_TEST_IMAGE (``oci:<dir>:<tag>``) is pushed with skopeo to
a real docker-registry on 127.0.0.1, pulled back by podman, and run the way the Kubernetes
manifests run it: the init step (deploy/kubernetes/base/pull-models.sh) pulls the model from
that registry into a named volume, then the daemon serves it on a port published on 127.0.0.1
and answers a chat; a second container on the same volume finds the model without pulling.

Traffic stays on loopback: the registry listens on 127.0.0.1 and the containers reach it through
slirp4netns's host-loopback address 10.0.2.2; the daemon's port is published on 127.0.0.1 only.
Podman keeps its images, containers and volumes under this test's temporary directory
(--root/--runroot), which the fixture resets and deletes.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support.processes import free_port, wait_until
from tests.support.registry_fixtures import RegistryServer, start_registry

ROOT = Path(__file__).resolve().parents[2]
PULL_MODELS = ROOT / "deploy" / "kubernetes" / "base" / "pull-models.sh"
SERVICE = "docker-model-runner"
SERVICE_UID = 10001
#: What a container sees of the host's loopback (slirp4netns allow_host_loopback).
HOST_LOOPBACK = "10.0.2.2"
MODEL_REPOSITORY = "ai/smollm2"
MODEL_TAG = "135M-Q4_1"
PODMAN_TIMEOUT = 300

pytestmark = [pytest.mark.registry, pytest.mark.llama_server, pytest.mark.timeout(900)]


def _image_reference() -> tuple[Path, str]:
    value = os.environ.get("DMR_TEST_IMAGE", "")
    if not value.startswith("oci:") or value.count(":") < 2:
        pytest.fail(f"DMR_TEST_IMAGE must be oci:<layout>:<tag> (make test-image sets it), not {value!r}")
    layout, tag = value[len("oci:") :].rsplit(":", 1)
    return Path(layout), tag


@dataclass
class Podman:
    """podman with a private store under ``root`` and the flags this kind of host needs."""

    root: Path

    def __call__(self, *args: str, timeout: float = PODMAN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        argv = [
            "podman", f"--root={self.root / 'storage'}", f"--runroot={self.root / 'run'}",
            "--cgroup-manager=cgroupfs", "--runtime=runc", *args,
        ]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def ok(self, *args: str, timeout: float = PODMAN_TIMEOUT) -> str:
        result = self(*args, timeout=timeout)
        assert result.returncode == 0, f"podman {' '.join(args)}: {result.stderr[-3000:]}"
        return result.stdout


def run_flags() -> list[str]:
    """Flags of every `podman run` here, each for a reason of the host, not of the image.

    * The limits podman sets by default (nofile 1048576, nproc 4194304) are above this host's
      hard limits, and raising a hard limit needs CAP_SYS_RESOURCE, which root lacks in this
      sandbox: the runtime's setrlimit fails with EPERM. Ours, at or below the hard limits, work.
    * runc, not crun: crun refuses cgroups in hybrid (v1 + v2) mode, which this host has.
    * slirp4netns with allow_host_loopback: the container reaches the host's 127.0.0.1 (the
      registry) as 10.0.2.2, and -p 127.0.0.1:... publishes only on loopback.
    """
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else min(nofile, 65536)
    return [
        f"--ulimit=nofile={nofile}:{nofile}", "--ulimit=nproc=4096:4096",
        "--network=slirp4netns:allow_host_loopback=true",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def image_layout() -> tuple[Path, str]:
    layout, tag = _image_reference()
    assert (layout / "index.json").is_file(), f"{layout} is not an OCI layout; run make image"
    return layout, tag


@pytest.fixture(scope="module")
def image_registry(
    docker_registry_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryServer]:
    server = start_registry(docker_registry_bin, tmp_path_factory.mktemp("image-registry"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    for tool in ("podman", "skopeo", "runc", "slirp4netns"):
        assert shutil.which(tool), f"{tool} is not installed (make test-image installs it)"
    tool = Podman(tmp_path_factory.mktemp("podman"))
    yield tool
    # Containers first (each stop bounded by its own timeout), then everything else.
    tool("rm", "--all", "--force", "--time=5", timeout=120)
    tool("system", "reset", "--force", timeout=120)
    shutil.rmtree(tool.root, ignore_errors=True)


def _blob(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hexdigest


def _manifest(layout: Path, tag: str) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return dict(json.loads(_blob(layout, entry["digest"]).read_text()))
    raise AssertionError(f"{layout} has no image tagged {tag}")


def test_image_config_runs_the_daemon_as_the_service_user(image_layout: tuple[Path, str]) -> None:
    """The config: `model-runner serve` as uid 10001 (the manifests' runAsUser), the unit's paths."""
    layout, tag = image_layout
    manifest = _manifest(layout, tag)
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())  # type: ignore[index]
    process = config["config"]
    assert process["User"] == f"{SERVICE_UID}:{SERVICE_UID}"
    assert process["Entrypoint"] == ["/usr/bin/model-runner"] and process["Cmd"] == ["serve"]
    assert "12434/tcp" in process["ExposedPorts"]
    assert f"/var/lib/{SERVICE}" in process["Volumes"]
    env = dict(item.split("=", 1) for item in process["Env"])
    assert env["MODELS_PATH"] == f"/var/lib/{SERVICE}/models"
    assert env["PATH"].split(":")[0] == f"/usr/libexec/{SERVICE}"
    assert config["os"] == "linux" and len(manifest["layers"]) == 1  # type: ignore[arg-type]


def test_image_rootfs_holds_the_packages_and_nothing_left_over(image_layout: tuple[Path, str]) -> None:
    """One layer from Debian packages: both of ours installed; no apt cache, man pages or .debs."""
    layout, tag = image_layout
    layer = _manifest(layout, tag)["layers"][0]  # type: ignore[index]
    with tarfile.open(_blob(layout, layer["digest"])) as archive:
        members = {member.name.removeprefix("./"): member for member in archive}
        status = archive.extractfile(members["var/lib/dpkg/status"])
        assert status is not None
        installed = status.read().decode()
        passwd = archive.extractfile(members["etc/passwd"])
        assert passwd is not None
        users = passwd.read().decode()
        # The build's own file:// source of our .debs does not stay in the image's apt sources.
        sources = [
            (archive.extractfile(member) or io.BytesIO()).read().decode()
            for name, member in members.items()
            if name.startswith("etc/apt/sources.list") and member.isfile()
        ]
    for package in ("docker-model-plugin", "docker-model-runner-llama-server"):
        assert f"Package: {package}\nStatus: install ok installed" in installed, package
    assert "Package: apt\n" not in installed and "Package: systemd\n" not in installed
    assert f"{SERVICE}:x:{SERVICE_UID}:{SERVICE_UID}:" in users
    assert sources and not any("file://" in text for text in sources), sources
    for path in ("usr/bin/model-runner", f"usr/libexec/{SERVICE}/llama-server", "usr/bin/docker-model"):
        assert path in members, path
    state = members[f"var/lib/{SERVICE}/models"]
    assert (state.uid, state.gid, state.mode & 0o777) == (SERVICE_UID, SERVICE_UID, 0o750)
    leftovers = [
        name for name in members
        if name.endswith(".deb") or name.startswith(("usr/share/man/", "var/lib/apt/lists/"))
        and not name.endswith(("/", "lock", "partial"))
    ]  # fmt: skip
    assert leftovers == []


def _missing_cpu_flags() -> list[str]:
    """Return the x86-64-v3 flags this amd64 host lacks (the engine package needs them)."""
    if os.uname().machine != "x86_64":
        return []
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [flag for flag in ("avx2", "fma", "f16c", "bmi2") if flag not in flags]


def _wait_for_daemon(url: str, container: str, podman: Podman) -> None:
    def answers() -> bool:
        try:
            return requests.get(f"{url}/models", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    if not wait_until(answers, timeout=90, interval=0.5):
        logs = podman("logs", container).stderr[-3000:]
        pytest.fail(f"the daemon in {container} did not answer on {url} within 90 s:\n{logs}")


def test_image_from_a_registry_pulls_a_model_and_answers_a_chat(
    image_layout: tuple[Path, str],
    image_registry: RegistryServer,
    podman: Podman,
    smollm2_gguf: Path,
) -> None:
    missing = _missing_cpu_flags()
    if missing:
        # The image's engine is the package's GGML_NATIVE=OFF build for x86-64-v3: it cannot
        # run here (the other tests of the image still do).
        pytest.skip(f"this CPU lacks {', '.join(missing)}, which the image's engine needs")
    layout, tag = image_layout
    # The image, through a registry: skopeo pushes the layout, podman pulls it back.
    pushed = f"{image_registry.host}/{SERVICE}:{tag}"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{pushed}"],
        check=True, timeout=PODMAN_TIMEOUT, capture_output=True,
    )  # fmt: skip
    podman.ok("pull", "--quiet", "--tls-verify=false", f"docker://{pushed}")
    # The model, packaged on the host and pushed to the same registry.
    model = f"{image_registry.host}/{MODEL_REPOSITORY}:{MODEL_TAG}"
    cli = ROOT / ".venv" / "bin" / "docker-model"
    subprocess.run(
        [str(cli), "package", "--gguf", str(smollm2_gguf), "--push", model],
        check=True, timeout=PODMAN_TIMEOUT, capture_output=True,
    )  # fmt: skip
    registry_port = image_registry.host.rsplit(":", 1)[1]
    in_container = f"{HOST_LOOPBACK}:{registry_port}/{MODEL_REPOSITORY}:{MODEL_TAG}"
    settings = [f"--env=DMR_INSECURE_REGISTRIES={HOST_LOOPBACK}:{registry_port}"]
    podman.ok("volume", "create", "models")

    # The Kubernetes init step, in the image: pull PULL_MODELS into the volume, then exit.
    init = podman(
        "run", "--rm", *run_flags(), *settings, "--volume=models:/var/lib/docker-model-runner",
        f"--volume={PULL_MODELS}:/opt/docker-model-runner/pull-models.sh:ro",
        f"--env=PULL_MODELS={in_container}", "--entrypoint=/bin/sh",
        pushed, "/opt/docker-model-runner/pull-models.sh",
    )  # fmt: skip
    assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-3000:]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    podman.ok(
        "run", "--detach", "--name=daemon", *run_flags(), *settings,
        "--volume=models:/var/lib/docker-model-runner", f"--publish=127.0.0.1:{port}:12434", pushed,
    )  # fmt: skip
    _wait_for_daemon(url, "daemon", podman)
    listed = requests.get(f"{url}/models", timeout=10).json()
    assert any(in_container in (entry.get("tags") or []) for entry in listed), listed
    answer = requests.post(
        f"{url}/engines/v1/chat/completions",
        json={"model": in_container, "messages": [{"role": "user", "content": "Say hello."}],
              "max_tokens": 16, "temperature": 0},
        timeout=120,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"].strip()
    # The daemon and its engine run as the service user, the engine from the engine package.
    listing = podman.ok(
        "exec", "daemon", "sh", "-c",
        'for p in /proc/[0-9]*; do echo "$(stat -c %u "$p") $(tr "\\0" " " < "$p/cmdline")"; done',
    )  # fmt: skip
    processes = [line.split(" ", 1) for line in listing.splitlines() if line.strip()]
    assert all(uid == str(SERVICE_UID) for uid, _ in processes), processes
    assert any(args.startswith(f"/usr/libexec/{SERVICE}/llama-server ") for _, args in processes), processes
    running = requests.get(f"{url}/engines/ps", timeout=10).json()
    assert [entry["model_name"] for entry in running] == [in_container], running

    # TERM (podman stop) ends the daemon and its engine well inside the grace time, exit 0.
    started = time.monotonic()
    podman.ok("stop", "--time=30", "daemon")
    assert time.monotonic() - started < 25
    assert podman.ok("inspect", "--format={{.State.ExitCode}}", "daemon").strip() == "0"

    # A new container on the same volume serves the stored model without pulling.
    podman.ok(
        "run", "--detach", "--name=again", *run_flags(), "--volume=models:/var/lib/docker-model-runner",
        f"--publish=127.0.0.1:{port}:12434", pushed,
    )  # fmt: skip
    _wait_for_daemon(url, "again", podman)
    listed = requests.get(f"{url}/models", timeout=10).json()
    assert any(in_container in (entry.get("tags") or []) for entry in listed), listed



def test_image_rebuild_from_the_same_packages_gives_the_same_bytes(
    image_layout: tuple[Path, str], tmp_path: Path
) -> None:
    """Reproducible: the same .debs, Debian packages and SOURCE_DATE_EPOCH give the same digest."""
    layout, tag = image_layout
    built = json.loads((layout.parent / "image.json").read_text())
    assert built["reference"] == f"oci:{layout}:{tag}"
    rebuilt_layout = tmp_path / "oci"
    env = {
        **os.environ, "IMAGE_DEBS": " ".join(built["debs"]), "IMAGE_LAYOUT": str(rebuilt_layout),
        "IMAGE_TAG": tag, "SOURCE_DATE_EPOCH": str(built["source_date_epoch"]),
    }  # fmt: skip
    result = subprocess.run(
        [str(ROOT / "packaging" / "build-image.sh")], env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rebuilt = json.loads((tmp_path / "image.json").read_text())
    assert rebuilt["manifest_digest"] == built["manifest_digest"]
    assert sorted(p.name for p in (rebuilt_layout / "blobs" / "sha256").iterdir()) == sorted(
        p.name for p in (layout / "blobs" / "sha256").iterdir()
    )
