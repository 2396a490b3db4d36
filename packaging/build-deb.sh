#!/usr/bin/env bash
# Build the docker-model-plugin .deb with dpkg-buildpackage from a copy of the working tree.
#
# Installs the build dependencies (debian/control's Build-Depends) when missing, builds in
# build/deb/, runs lintian on the result and copies the .deb to build/packages/. Prints the
# .deb's path on its last line.
#
# Environment:
#   PACKAGES_DIR  where the .deb goes (default: build/packages)
#   LINTIAN       0 skips lintian (default 1); lintian errors fail the build
set -euo pipefail
# shellcheck source=packaging/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

apt_install_missing dpkg-dev debhelper dh-python pybuild-plugin-pyproject help2man python3 python3-setuptools \
    python3-yaml python3-requests lintian

version="$(dpkg-parsechangelog -l "${repo_root}/debian/changelog" -S Version)"
[[ "$version" == "$(project_version)" ]] \
    || die "debian/changelog has version '${version}' but orchestrator/__init__.py has '$(project_version)'; add a changelog entry (dch -v)"

work="${repo_root}/build/deb"
src="${work}/docker-model-runner-${version}"
export_tree "$src"
rm -f "${work}"/*.deb "${work}"/*.changes "${work}"/*.buildinfo

# A clean PATH, as a build daemon has: an interpreter found earlier on PATH (pyenv, a venv)
# would otherwise build and byte-compile for the wrong Python.
clean_path=/usr/sbin:/usr/bin:/sbin:/bin
(cd "$src" && PATH="$clean_path" dpkg-checkbuilddeps) || die "build dependencies are missing (see above)"
log "building docker-model-plugin ${version} in ${src}"
(cd "$src" && env PATH="$clean_path" dpkg-buildpackage -us -uc -b) >&2

deb="${work}/docker-model-plugin_${version}_all.deb"
[[ -f "$deb" ]] || die "dpkg-buildpackage did not produce ${deb}"
if [[ "${LINTIAN:-1}" != 0 ]]; then
    log "lintian ${deb##*/}"
    # --fail-on error: warnings are reported but only errors fail the build.
    PATH="$clean_path" lintian --fail-on error --info --display-info "$deb" >&2
fi
mkdir -p "$packages_dir"
cp "$deb" "$packages_dir/"
log "built $(du -h "$deb" | cut -f1) ${packages_dir}/${deb##*/}"
echo "${packages_dir}/${deb##*/}"
