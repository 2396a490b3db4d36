"""Static checks of the engine packages built from packaging/llama-server/debian.

One source package, two binary packages chosen by build profile: docker-model-runner-llama-server
(CPU) and docker-model-runner-llama-server-cuda (``-Pcuda``). Building either takes from 15
minutes to an hour (packaging/build-engine-deb.sh), so these tests read the files and expand
debian/rules with ``make -n`` instead, and run the postinst against fake /proc/cpuinfo files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.engine import ENGINE_NAME, PACKAGED_CUDA_DIR
from orchestrator.enginebuild.provision import (
    CUDA_ARCHITECTURES,
    RPC_INSTALLED_NAME,
    RPC_TARGET,
    SERVER_TARGET,
)

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "packaging" / "llama-server" / "debian"
CPU_PACKAGE = "docker-model-runner-llama-server"
CUDA_PACKAGE = "docker-model-runner-llama-server-cuda"
LIBEXEC = "usr/libexec/docker-model-runner"
POSTINST = DEBIAN / f"{CPU_PACKAGE}.postinst"
X86_64_V3_FLAGS = ("avx2", "fma", "f16c", "bmi2")
FULL_FLAGS = "fpu vme de pse tsc msr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2"

needs_dpkg_make = pytest.mark.skipif(
    shutil.which("make") is None or not Path("/usr/share/dpkg/architecture.mk").is_file(),
    reason="make and dpkg-dev (architecture.mk) are needed to expand debian/rules",
)


def _paragraphs() -> dict[str, dict[str, str]]:
    """Return debian/control's paragraphs by package name ("" for the source paragraph)."""
    paragraphs = {}
    text = (DEBIAN / "control").read_text(encoding="utf-8")
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        fields = {
            name: " ".join(value.split())
            for name, value in re.findall(
                r"^([\w-]+):((?:.*)(?:\n[ \t].*)*)", paragraph, flags=re.MULTILINE
            )
        }
        paragraphs[fields.get("Package", "")] = fields
    return paragraphs


def _rules_dry_run(tmp_path: Path, *, profiles: str, arch: str = "amd64") -> str:
    """Return the commands debian/rules would run for configure, build, test and install."""
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "-f",
            str(DEBIAN / "rules"),
            "override_dh_auto_configure",
            "override_dh_auto_build",
            "override_dh_auto_test",
            "override_dh_auto_install",
            f"DEB_HOST_ARCH={arch}",
            f"DEB_BUILD_PROFILES={profiles}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
    )
    return result.stdout


def _postinst(tmp_path: Path, cpuinfo: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo, encoding="utf-8")
    return subprocess.run(
        ["sh", str(POSTINST), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "DMR_CPUINFO": str(path)},
    )


# --- debian/control -------------------------------------------------------------------------------


def test_one_binary_package_per_build_profile() -> None:
    paragraphs = _paragraphs()
    assert set(paragraphs) == {"", CPU_PACKAGE, CUDA_PACKAGE}
    assert paragraphs[""]["Source"] == CPU_PACKAGE
    assert paragraphs[CPU_PACKAGE]["Build-Profiles"] == "<!cuda>"
    assert paragraphs[CUDA_PACKAGE]["Build-Profiles"] == "<cuda>"
    for package in (CPU_PACKAGE, CUDA_PACKAGE):
        assert paragraphs[package]["Architecture"] == "amd64 arm64"
        assert paragraphs[package]["Depends"] == "${misc:Depends}, ${shlibs:Depends},"
        assert paragraphs[package]["Enhances"] == "docker-model-plugin,"


def test_cuda_package_installs_beside_the_cpu_one() -> None:
    """The daemon falls back to the CPU engine without a GPU: both must be installable."""
    for fields in _paragraphs().values():
        for relation in ("Conflicts", "Breaks", "Replaces", "Provides"):
            assert relation not in fields, (fields.get("Package"), relation)
    assert _paragraphs()[CUDA_PACKAGE]["Recommends"] == f"{CPU_PACKAGE},"


def test_build_depends_name_the_compilers_only() -> None:
    build_depends = _paragraphs()[""]["Build-Depends"]
    assert build_depends == "debhelper-compat (= 13), cmake, g++,"
    # The CUDA toolkit is NVIDIA's (/usr/local/cuda), not a Debian package: not listed.
    assert "cuda" not in build_depends


def test_descriptions_name_the_install_paths() -> None:
    paragraphs = _paragraphs()
    assert f"/{LIBEXEC}/llama-server" in paragraphs[CPU_PACKAGE]["Description"]
    assert f"/{LIBEXEC}/rpc-server" in paragraphs[CPU_PACKAGE]["Description"]
    assert f"/{LIBEXEC}/cuda/llama-server" in paragraphs[CUDA_PACKAGE]["Description"]


# --- debian/rules ---------------------------------------------------------------------------------


@needs_dpkg_make
def test_cpu_rules_build_server_and_rpc_worker(tmp_path: Path) -> None:
    commands = _rules_dry_run(tmp_path, profiles="")
    (configure,) = [line for line in commands.splitlines() if "dh_auto_configure" in line]
    for flag in (
        "-DGGML_RPC=ON",
        "-DGGML_NATIVE=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_SERVER=ON",
        # x86-64-v3, what the postinst checks for.
        "-DGGML_AVX2=ON",
        "-DGGML_FMA=ON",
        "-DGGML_F16C=ON",
        "-DGGML_BMI2=ON",
    ):
        assert flag in configure.split(), flag
    assert "GGML_CUDA" not in configure
    assert f"dh_auto_build -- {SERVER_TARGET} {RPC_TARGET}" in commands
    assert f"obj/bin/{SERVER_TARGET} --version" in commands
    assert f"obj/bin/{RPC_TARGET} --help" in commands
    assert (
        f"install -D -m 0755 obj/bin/{SERVER_TARGET} debian/{CPU_PACKAGE}/{LIBEXEC}/{ENGINE_NAME}"
        in commands
    )
    assert (
        f"install -D -m 0755 obj/bin/{RPC_TARGET} debian/{CPU_PACKAGE}/{LIBEXEC}/{RPC_INSTALLED_NAME}"
        in commands
    )


@needs_dpkg_make
def test_arm64_rules_have_no_x86_flags(tmp_path: Path) -> None:
    commands = _rules_dry_run(tmp_path, profiles="", arch="arm64")
    assert "-DGGML_RPC=ON" in commands
    assert "-DGGML_AVX2" not in commands


@needs_dpkg_make
def test_cuda_rules_build_for_the_provisioner_architectures(tmp_path: Path) -> None:
    commands = _rules_dry_run(tmp_path, profiles="cuda")
    (configure,) = [line for line in commands.splitlines() if "dh_auto_configure" in line]
    assert "-DGGML_CUDA=ON" in configure.split()
    # Quoted for the shell, so that the semicolons reach cmake.
    assert f"'-DCMAKE_CUDA_ARCHITECTURES={CUDA_ARCHITECTURES}'" in configure
    assert CUDA_ARCHITECTURES == "80;86;89;90"
    assert "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc" in configure.split()
    assert "-DGGML_RPC=ON" in configure.split()
    assert "-DGGML_AVX2=ON" in configure.split()
    assert "test -x /usr/local/cuda/bin/nvcc" in commands
    assert f"dh_auto_build -- {SERVER_TARGET} {RPC_TARGET}" in commands
    cuda_dir = str(PACKAGED_CUDA_DIR).lstrip("/")
    assert cuda_dir == f"{LIBEXEC}/cuda"
    assert (
        f"install -D -m 0755 obj/bin/{SERVER_TARGET} debian/{CUDA_PACKAGE}/{cuda_dir}/{ENGINE_NAME}"
        in commands
    )
    assert (
        f"install -D -m 0755 obj/bin/{RPC_TARGET} debian/{CUDA_PACKAGE}/{cuda_dir}/{RPC_INSTALLED_NAME}"
        in commands
    )
    assert f"debian/{CPU_PACKAGE}/" not in commands


@needs_dpkg_make
def test_cuda_home_moves_the_toolkit(tmp_path: Path) -> None:
    result = subprocess.run(
        ["make", "-n", "-f", str(DEBIAN / "rules"), "override_dh_auto_configure"]
        + ["DEB_HOST_ARCH=amd64", "DEB_BUILD_PROFILES=cuda", "CUDA_HOME=/opt/cuda-12.4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "-DCMAKE_CUDA_COMPILER=/opt/cuda-12.4/bin/nvcc" in result.stdout


def test_cuda_lintian_override_explains_the_toolkit_runpath() -> None:
    text = (DEBIAN / f"{CUDA_PACKAGE}.lintian-overrides").read_text(encoding="utf-8")
    assert f"{CUDA_PACKAGE}: custom-library-search-path" in text
    assert "/usr/local/cuda" in text


# --- postinst -------------------------------------------------------------------------------------


def test_both_packages_run_the_same_postinst() -> None:
    cuda = DEBIAN / f"{CUDA_PACKAGE}.postinst"
    assert cuda.is_symlink()
    assert cuda.resolve() == POSTINST.resolve()
    assert os.access(POSTINST, os.X_OK)
    text = POSTINST.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert "#DEBHELPER#" in text
    assert text.rstrip().endswith("exit 0")


def test_postinst_is_silent_on_an_x86_64_v3_processor(tmp_path: Path) -> None:
    result = _postinst(tmp_path, f"processor\t: 0\nflags\t\t: {FULL_FLAGS}\n", "configure")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("absent", "named"),
    [(("avx2",), "avx2"), (("avx2", "fma", "bmi2"), "avx2 fma bmi2"), (X86_64_V3_FLAGS, None)],
)
def test_postinst_warns_about_missing_flags_and_succeeds(
    tmp_path: Path, absent: tuple[str, ...], named: str | None
) -> None:
    flags = " ".join(flag for flag in FULL_FLAGS.split() if flag not in absent)
    result = _postinst(tmp_path, f"processor\t: 0\nflags\t\t: {flags}\n", "configure")
    assert result.returncode == 0
    assert result.stdout == ""
    first_line = result.stderr.splitlines()[0]
    assert first_line.startswith(f"{CPU_PACKAGE}: warning: this processor lacks ")
    assert first_line.split("lacks ")[1].split(" (")[0] == (named or " ".join(X86_64_V3_FLAGS))
    assert "`make engine`" in result.stderr
    assert "LLAMA_SERVER_PATH" in result.stderr
    assert "/etc/default/docker-model-runner" in result.stderr


@pytest.mark.parametrize(
    "cpuinfo",
    [
        "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes\n",  # arm64
        None,  # the file does not exist
        "",
    ],
)
def test_postinst_checks_nothing_without_an_x86_flags_line(
    tmp_path: Path, cpuinfo: str | None
) -> None:
    result = _postinst(tmp_path, cpuinfo, "configure")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_postinst_checks_only_on_configure(tmp_path: Path) -> None:
    result = _postinst(tmp_path, "flags\t\t: fpu sse sse2\n", "abort-upgrade", "1.0")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_postinst_passes_on_this_machine() -> None:
    result = subprocess.run(
        ["sh", str(POSTINST), "configure"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr


# --- build scripts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    ["build-deb.sh", "build-rpm.sh", "build-engine-deb.sh", "package-test.sh", "common.sh"],
)
def test_packaging_scripts_parse(script: str) -> None:
    result = subprocess.run(
        ["bash", "-n", str(ROOT / "packaging" / script)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_engine_script_builds_cpu_in_the_clean_room_and_cuda_on_the_host() -> None:
    text = (ROOT / "packaging" / "build-engine-deb.sh").read_text(encoding="utf-8")
    assert "--variant=buildd --include=debian-archive-keyring,ccache" in text
    # ccache crosses the chroot boundary both ways, and comes back even when the build fails.
    build = text.index("dpkg-buildpackage -us -uc -b -Jauto; echo")
    assert text.index("sync-in ${ccache_dir} /build/ccache") < build
    status_check = text.index('test "$(cat "$1/build/status")" = 0')
    assert build < text.index("sync-out /build/ccache ${ccache_dir}") < status_check
    assert "dpkg-buildpackage -us -uc -b -Pcuda" in text
