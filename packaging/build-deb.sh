#!/usr/bin/env bash
# Build the docker-model-plugin .deb the way Debian's build daemons do: dpkg-buildpackage -us -uc
# -b in a fresh chroot that holds only Essential, build-essential and debian/control's
# Build-Depends (mmdebstrap --variant=buildd, then apt-get build-dep). Nothing installed on the
# host takes part, so a missing Build-Depends fails here on every machine. The host only needs
# mmdebstrap, dpkg-dev (dpkg-parsechangelog) and lintian, installed when missing.
#
# The source is a copy of the working tree (uncommitted edits included); the build runs as the
# chroot's user nobody (Rules-Requires-Root: no). The .deb is checked with lintian on the host and
# copied to build/packages/; the build's log is build/deb/build.log. Prints the .deb's path on its
# last line. See packaging/common.sh for the clean room's sources and .deb cache.
#
# Environment:
#   PACKAGES_DIR  where the .deb goes (default: build/packages)
#   LINTIAN       0 skips lintian (default 1); lintian errors fail the build
#   CLEANROOM_*   see packaging/common.sh
set -euo pipefail
# shellcheck source=packaging/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

apt_install_missing dpkg-dev lintian

version="$(dpkg-parsechangelog -l "${repo_root}/debian/changelog" -S Version)"
[[ "$version" == "$(project_version)" ]] \
    || die "debian/changelog has version '${version}' but orchestrator/__init__.py has '$(project_version)'; add a changelog entry (dch -v)"

work="${repo_root}/build/deb"
export_tree "${work}/in/src"
rm -rf "${work}/out" && mkdir -p "${work}/out"

cleanroom_init
log "building docker-model-plugin ${version} in a clean ${cleanroom_tail[0]} chroot"
# shellcheck disable=SC2016  # the hooks' "$1" is the chroot, expanded by mmdebstrap
cleanroom_run "${work}/build.log" "debian/control's Build-Depends" \
    --variant=buildd --include=debian-archive-keyring "${cleanroom_args[@]}" \
    --customize-hook='mkdir "$1/build"' \
    --customize-hook="sync-in ${work}/in /build" \
    --customize-hook='chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get build-dep -y --no-install-recommends /build/src' \
    "${cleanroom_cache_out[@]}" \
    --customize-hook='chroot "$1" chown -R nobody:nogroup /build' \
    --customize-hook="${cleanroom_as_nobody} sh -c 'cd /build/src && dpkg-buildpackage -us -uc -b'" \
    --customize-hook='chroot "$1" sh -c "mkdir /build/out && mv /build/*.deb /build/*.buildinfo /build/*.changes /build/out/"' \
    --customize-hook="sync-out /build/out ${work}/out" \
    "${cleanroom_tail[@]}"

deb="${work}/out/docker-model-plugin_${version}_all.deb"
[[ -f "$deb" ]] || die "dpkg-buildpackage did not produce ${deb##*/}"
if [[ "${LINTIAN:-1}" != 0 ]]; then
    log "lintian ${deb##*/}"
    # --fail-on error: warnings are reported but only errors fail the build.
    env PATH=/usr/sbin:/usr/bin:/sbin:/bin lintian --fail-on error --info --display-info "$deb" >&2
fi
publish_package "$deb"
