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
