#!/usr/bin/env bash
# Build the docker-model-plugin RPM with rpmbuild -bb from a copy of the working tree.
#
# On Debian the build runs in a fresh chroot (mmdebstrap --variant=apt: Essential + apt), as the
# .deb's does, holding only rpm and the Debian packages that stand in for the spec's
# BuildRequires. The Fedora→Debian name mapping is rpm/builddeps-debian.txt, one line per
# BuildRequires: a BuildRequires without a line there stops the build before it starts, and one
# missing from the spec leaves its package out of the chroot, so the build fails as it would on
# Fedora. rpmbuild gets --nodeps (the chroot's rpm database is empty: the mapping, not rpm,
# checks the BuildRequires) and rpm/macros.compat for the Fedora macros Debian's rpm lacks. The
# host needs only mmdebstrap, installed when missing.
#
# On Fedora or EL it builds on the host with the distribution's own macros (install the
# BuildRequires with `dnf builddep rpm/docker-model-plugin.spec` first).
#
# The .rpm is copied to build/packages/; the build's log is build/rpm/build.log. Prints the
# .rpm's path on its last line.
#
# Environment:
#   PACKAGES_DIR  where the .rpm goes (default: build/packages)
#   CLEANROOM_*   see packaging/common.sh
set -euo pipefail
# shellcheck source=packaging/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

spec="${repo_root}/rpm/docker-model-plugin.spec"
mapping="${repo_root}/rpm/builddeps-debian.txt"

version="$(sed -n 's/^Version: *//p' "$spec")"
[[ "$version" == "$(project_version)" ]] \
    || die "rpm/docker-model-plugin.spec has Version '${version}' but orchestrator/__init__.py has '$(project_version)'; update the spec"

# The spec's BuildRequires names, one a line, without version constraints ("a >= 1, b" -> a, b).
# Macros are not expanded: the spec's BuildRequires lines must name packages literally.
spec_buildrequires() {
    awk '/^BuildRequires:/ {
        sub(/^BuildRequires:[[:space:]]*/, "")
        gsub(/,/, " ")
        n = split($0, token, /[[:space:]]+/)
        for (i = 1; i <= n; i++) {
            if (token[i] ~ /^[<>=]+$/) { i++; continue }
            if (token[i] != "") print token[i]
        }
    }' "$1"
}

# The Debian packages for the spec's BuildRequires, from the mapping (dies on an unmapped one).
debian_builddeps() {
    local requirement line fields pkg
    while IFS= read -r requirement; do
        [[ "$requirement" != *%* ]] \
            || die "BuildRequires '${requirement}' in ${spec##*/} uses a macro; name the package literally"
        line="$(awk -v name="$requirement" '$1 == name' "$mapping")"
        [[ -n "$line" ]] \
            || die "BuildRequires '${requirement}' has no Debian equivalent in rpm/builddeps-debian.txt; add a line for it"
        read -r -a fields <<<"$line"
        for pkg in "${fields[@]:1}"; do
            [[ "$pkg" == - ]] || printf '%s\n' "$pkg"
        done
    done < <(spec_buildrequires "$spec")
}

topdir="${repo_root}/build/rpm"
rm -rf "$topdir" && mkdir -p "$topdir"
name="docker-model-runner-${version}"
export_tree "${topdir}/tree/${name}"

if [[ ! -f /etc/debian_version ]]; then
    command -v rpmbuild >/dev/null || die "rpmbuild is required (dnf install rpm-build)"
    mkdir -p "${topdir}/SOURCES"
    tar -C "${topdir}/tree" -czf "${topdir}/SOURCES/${name}.tar.gz" "$name"
    cp "${repo_root}/systemd/docker-model-runner.sysusers" "${topdir}/SOURCES/"
    log "building docker-model-plugin ${version} in ${topdir}"
    env PATH=/usr/sbin:/usr/bin:/sbin:/bin rpmbuild -bb --define "_topdir ${topdir}" "$spec" >&2
    out="${topdir}/RPMS"
else
    # (Not `mapfile < <(...)`: a die in a process substitution would not stop the script.)
    deps="$(debian_builddeps)"
    mapfile -t builddeps <<<"$deps"
    # What the chroot gets: the archive keyring (apt inside verifies the sources with it), rpm
    # (rpmbuild, for the build on Debian, not a BuildRequires) and the mapped BuildRequires.
    include="$(IFS=,; echo "debian-archive-keyring,rpm,${builddeps[*]}")"
    # /build in the chroot: topdir/SOURCES (the source tarball and the sysusers file, Source0 and
    # Source1) and rpm/ (the spec, macros.compat, install-wheel.py).
    in="${topdir}/in"
    mkdir -p "${in}/topdir/SOURCES"
    tar -C "${topdir}/tree" -czf "${in}/topdir/SOURCES/${name}.tar.gz" "$name"
    cp "${topdir}/tree/${name}/systemd/docker-model-runner.sysusers" "${in}/topdir/SOURCES/"
    cp -r "${topdir}/tree/${name}/rpm" "${in}/rpm"
    out="${topdir}/out"
    mkdir -p "$out"

    cleanroom_init
    log "building docker-model-plugin ${version} in a clean ${cleanroom_tail[0]} chroot with ${builddeps[*]}"
    # shellcheck disable=SC2016  # the hooks' "$1" is the chroot, expanded by mmdebstrap
    cleanroom_run "${topdir}/build.log" "the spec's BuildRequires (or its line in rpm/builddeps-debian.txt)" \
        --variant=apt --include="$include" "${cleanroom_args[@]}" \
        "${cleanroom_cache_out[@]}" \
        --customize-hook='mkdir "$1/build"' \
        --customize-hook="sync-in ${in} /build" \
        --customize-hook='chroot "$1" chown -R nobody:nogroup /build' \
        --customize-hook="${cleanroom_as_nobody} rpmbuild -bb --nodeps --load /build/rpm/macros.compat --define '_topdir /build/topdir' --define '_dmr_rpm_dir /build/rpm' /build/rpm/docker-model-plugin.spec" \
        --customize-hook="sync-out /build/topdir/RPMS ${out}" \
        "${cleanroom_tail[@]}"
fi

rpm_file="$(find "$out" -name "docker-model-plugin-${version}-*.noarch.rpm" | head -n 1)"
[[ -n "$rpm_file" ]] || die "rpmbuild did not produce docker-model-plugin-${version}-*.noarch.rpm"
publish_package "$rpm_file"
