# Shared by the packaging scripts (sourced, not run): paths, logging, root/sudo, tree export.
# shellcheck shell=bash

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
packages_dir="${PACKAGES_DIR:-${repo_root}/build/packages}"

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "$*"; exit 1; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

# Install Debian packages that are not installed yet (the Makefile's `deps` pattern).
apt_install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' \
            || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >&2
    fi
}

# Copy the built package $1 to $packages_dir and print its new path (the scripts' last line).
publish_package() {
    mkdir -p "$packages_dir"
    cp "$1" "$packages_dir/"
    log "built $(du -h "$1" | cut -f1) ${packages_dir}/${1##*/}"
    echo "${packages_dir}/${1##*/}"
}

# The project version (orchestrator.__version__), read without importing the package.
project_version() {
    sed -n 's/^__version__ = "\(.*\)"$/\1/p' "${repo_root}/orchestrator/__init__.py"
}

# Copy the working tree (tracked and untracked, minus what .gitignore ignores) into $1, so that
# builds never write into the repository and always see uncommitted edits.
export_tree() {
    local dest="$1"
    rm -rf "$dest" && mkdir -p "$dest"
    if git -C "$repo_root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$repo_root" ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' path; do
                [[ -e "${repo_root}/${path}" ]] && printf '%s\0' "$path"
            done \
            | tar -C "$repo_root" --null -T - -cf - | tar -C "$dest" -xf -
    else
        tar -C "$repo_root" --exclude-vcs --exclude=./.venv --exclude=./build \
            --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$dest" -xf -
    fi
}

# --- Clean room: a throwaway Debian chroot made by mmdebstrap for each build -----------------------
# The chroot holds only what the variant installs (buildd: Essential + apt + build-essential;
# apt: Essential + apt) plus what the build installs into it, so a build dependency
# missing from debian/control or the spec fails here as it would on any other machine, whatever
# the host has installed. mmdebstrap runs as root (mode root) or, unprivileged, in a user
# namespace (mode unshare, needs /etc/subuid entries); the chroot is built in a temporary
# directory and deleted afterwards (target /dev/null).
#
# Downloaded .debs are kept in $CLEANROOM_CACHE/<suite>-<arch> (default
# ~/.cache/model-runner/apt-archives/). The cache is not trusted. Before apt runs, its .debs are
# copied into the chroot's /var/cache/apt/archives/partial/, where apt takes them for interrupted
# downloads: it resumes each (an HTTP range request; nothing is transferred for a whole file),
# checks the SHA256 of the result against the Packages index, whose InRelease it verified with the
# archive keyring, and downloads the file again when it differs. (A .deb placed in archives/
# itself would be used if only its size matched: tried with a corrupted cached help2man .deb,
# which then failed dpkg's unpacking; through partial/ apt fetched the 198 kB again and the build
# passed.) After the build dependencies are installed, the verified .debs go back to the cache.
# It only grows (superseded versions stay): delete it any time.
#
# Environment:
#   CLEANROOM_SUITE    Debian suite of the chroot (default: the host's VERSION_CODENAME)
#   CLEANROOM_SOURCES  space-separated apt sources for the chroot: files (one-line or deb822) or
#                      mirror URLs (default: the host's enabled /etc/apt/sources.list{,.d/*})
#   CLEANROOM_CACHE    .deb cache root (default: ~/.cache/model-runner/apt-archives)

# Sets cleanroom_args, the mmdebstrap options shared by every clean-room build (sources, cache
# in); cleanroom_cache_out, the hooks that save the cache (add them after the hooks that install
# the build dependencies, so they are cached too, and before the build, so a failed build keeps
# them); and cleanroom_tail (SUITE TARGET MIRROR...), the last arguments.
cleanroom_init() {
    apt_install_missing mmdebstrap
    local suite arch cache sources=() file
    # shellcheck disable=SC1091
    suite="${CLEANROOM_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")}"
    [[ -n "$suite" ]] || die "cannot tell the host's Debian suite; set CLEANROOM_SUITE (e.g. bookworm)"
    arch="$(dpkg --print-architecture)"
    cache="${CLEANROOM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/model-runner/apt-archives}/${suite}-${arch}"
    mkdir -p "$cache"
    if [[ -n "${CLEANROOM_SOURCES:-}" ]]; then
        read -r -a sources <<<"$CLEANROOM_SOURCES"
    else
        # The host's enabled sources (apt reads only *.list and *.sources in sources.list.d).
        for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
            [[ -s "$file" ]] && grep -qvE '^[[:space:]]*(#|$)' "$file" && sources+=("$file")
        done
        ((${#sources[@]})) || sources=(http://deb.debian.org/debian)
    fi
    log "clean room: Debian ${suite}/${arch}, sources ${sources[*]}, .deb cache ${cache}"
    # SC2016: the hooks' "$1" is the chroot, expanded by mmdebstrap.
    # shellcheck disable=SC2034,SC2016  # used by the scripts that source this file
    cleanroom_args=(
        --architectures="$arch"
        # Keep the Essential .debs in /var/cache/apt/archives, so the cache gets them too.
        --skip=essential/unlink
        # A throwaway chroot: dpkg need not fsync every file it unpacks.
        --dpkgopt=force-unsafe-io
        --setup-hook='mkdir -p "$1/var/cache/apt/archives/partial"'
        --setup-hook="sync-in ${cache} /var/cache/apt/archives/partial/"
    )
    # Only the .debs apt has verified and installed (archives/, not partial/ or the lock file).
    # shellcheck disable=SC2034,SC2016
    cleanroom_cache_out=(
        --customize-hook='mkdir "$1/tmp/apt-cache-out" && find "$1/var/cache/apt/archives" -maxdepth 1 -name "*.deb" -exec cp -l -t "$1/tmp/apt-cache-out" {} +'
        --customize-hook="sync-out /tmp/apt-cache-out ${cache}"
        --customize-hook='rm -r "$1/tmp/apt-cache-out"'
    )
    # shellcheck disable=SC2034
    cleanroom_tail=("$suite" /dev/null "${sources[@]}")
}

# The command that runs its arguments inside the chroot as the unprivileged user nobody, with a
# minimal environment (a build daemon's: no root, no $HOME of the caller, clean PATH). For
# mmdebstrap hooks, where "$1" is the chroot.
# shellcheck disable=SC2016,SC2034
cleanroom_as_nobody='chroot "$1" setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs env -i HOME=/build PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8'

# Run mmdebstrap with the given arguments, its output on stderr and in the log file $1. When it
# fails, die with the reason if the log shows a known one: a Python module or a command missing in
# the chroot means the file named by $2 (debian/control's Build-Depends, the spec's
# BuildRequires) lacks the package that provides it.
cleanroom_run() {
    local log_file="$1" deps_file="$2" status module tool
    shift 2
    mkdir -p "$(dirname "$log_file")"
    set +o pipefail
    mmdebstrap "$@" 2>&1 | tee "$log_file" >&2
    status="${PIPESTATUS[0]}"
    set -o pipefail
    ((status == 0)) && return 0
    module="$(sed -n "s/.*ModuleNotFoundError: No module named '\([^'.]*\).*/\1/p" "$log_file" | head -n 1)"
    [[ -z "$module" ]] \
        || die "FAILED in the clean room: Python module '${module}' is not installed there; ${deps_file} lacks the package that provides it (full log: ${log_file})"
    # dash: "sh: 1: help2man: not found"; bash: "help2man: command not found".
    tool="$(sed -n -e 's/^.*: \([^ :]*\): not found$/\1/p' -e 's/^.*: \([^ :]*\): command not found$/\1/p' \
        "$log_file" | head -n 1)"
    [[ -z "$tool" ]] \
        || die "FAILED in the clean room: command '${tool}' is not installed there; ${deps_file} lacks the package that provides it (full log: ${log_file})"
    die "FAILED in the clean room (mmdebstrap exit status ${status}); the reason is above and in ${log_file}"
}
