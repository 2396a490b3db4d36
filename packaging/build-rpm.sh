#!/usr/bin/env bash
# Build the docker-model-plugin RPM with rpmbuild -bb from a copy of the working tree.
#
# On Debian (no Fedora macro packages) it loads rpm/macros.compat for the Python and systemd
# macros and passes --nodeps: the spec's BuildRequires name Fedora packages that Debian's rpm
# database cannot know, so the equivalent Debian packages are installed with apt instead.
# Prints the .rpm's path on its last line.
#
# Environment:
#   PACKAGES_DIR  where the .rpm goes (default: build/packages)
set -euo pipefail
# shellcheck source=packaging/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

spec="${repo_root}/rpm/docker-model-plugin.spec"
rpmbuild_args=()
if [[ -f /etc/debian_version ]]; then
    apt_install_missing rpm python3 python3-build python3-installer python3-setuptools \
        python3-wheel python3-yaml python3-requests help2man
    rpmbuild_args+=(--nodeps --load "${repo_root}/rpm/macros.compat")
else
    command -v rpmbuild >/dev/null || die "rpmbuild is required (dnf install rpm-build)"
fi

version="$(sed -n 's/^Version: *//p' "$spec")"
[[ "$version" == "$(project_version)" ]] \
    || die "rpm/docker-model-plugin.spec has Version '${version}' but orchestrator/__init__.py has '$(project_version)'; update the spec"

topdir="${repo_root}/build/rpm"
rm -rf "$topdir" && mkdir -p "${topdir}/SOURCES"
name="docker-model-runner-${version}"
export_tree "${topdir}/tree/${name}"
tar -C "${topdir}/tree" -czf "${topdir}/SOURCES/${name}.tar.gz" "$name"
cp "${repo_root}/systemd/docker-model-runner.sysusers" "${topdir}/SOURCES/"

log "building docker-model-plugin ${version} in ${topdir}"
env PATH=/usr/sbin:/usr/bin:/sbin:/bin rpmbuild -bb "${rpmbuild_args[@]}" \
    --define "_topdir ${topdir}" --define "_dmr_rpm_dir ${repo_root}/rpm" "$spec" >&2

rpm_file="$(find "${topdir}/RPMS" -name "docker-model-plugin-${version}-*.noarch.rpm" | head -n 1)"
[[ -n "$rpm_file" ]] || die "rpmbuild did not produce docker-model-plugin-${version}-*.noarch.rpm"
mkdir -p "$packages_dir"
cp "$rpm_file" "$packages_dir/"
log "built $(du -h "$rpm_file" | cut -f1) ${packages_dir}/${rpm_file##*/}"
echo "${packages_dir}/${rpm_file##*/}"
