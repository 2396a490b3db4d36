#!/usr/bin/env bash
# Build the OCI image of the daemon (make image) from Debian packages only, with no base image:
#
#  1. the two packages: docker-model-plugin (build-deb.sh) and docker-model-runner-llama-server
#     (build-engine-deb.sh), or the files IMAGE_DEBS names;
#  2. a minimal Debian rootfs: mmdebstrap --variant=essential (Essential: yes, no apt) plus those
#     two .debs and what they depend on, installed by the host's apt; no man pages, no docs but
#     copyright files, no locales; written as a tar whose timestamps are clamped to
#     SOURCE_DATE_EPOCH (the last commit's time) so the same tree and the same Debian packages give
#     the same bytes;
#  3. umoci: an OCI layout (build/image/oci, tag = the project version) holding that tar as its
#     one layer and a config that runs `model-runner serve` as the service user, uid/gid 10001
#     (the Kubernetes manifests' runAsUser), with the unit's environment;
#  4. IMAGE_DEST set: skopeo copy to that destination (docker://registry/name:tag, oci-archive:,
#     ...; IMAGE_DEST_TLS_VERIFY=false for a plain-HTTP registry).
#
# The packages' systemd parts stay inert in a container: the service user is created before the
# plugin's postinst runs (its systemd-sysusers then finds it), the directories the unit's
# StateDirectory=/RuntimeDirectory=/LogsDirectory= would make are made here, and the engine needs
# an x86-64-v3 processor on amd64 (README: Engine).
#
# Prints the image reference (oci:<layout>:<tag>) on its last line; writes build/image/build.log
# (mmdebstrap) and image.json beside the layout (reference, digest, size, epoch, the .debs).
#
# Environment:
#   IMAGE_DEBS                   the two .deb files, space-separated (default: build both)
#   IMAGE_LAYOUT                 OCI layout directory (default: build/image/oci)
#   IMAGE_TAG                    tag in the layout (default: the project version)
#   IMAGE_DEST                   skopeo destination to push to (default: none)
#   IMAGE_DEST_TLS_VERIFY        false for a plain-HTTP or self-signed registry (default: true)
#   SOURCE_DATE_EPOCH            timestamps of the image (default: the last commit's time)
#   CLEANROOM_*                  Debian suite, sources and .deb cache: see packaging/common.sh
set -euo pipefail
# shellcheck source=packaging/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ "$(id -u)" == 0 ]] || exec sudo --preserve-env=IMAGE_DEBS,IMAGE_LAYOUT,IMAGE_TAG,IMAGE_DEST,IMAGE_DEST_TLS_VERIFY,SOURCE_DATE_EPOCH,PACKAGES_DIR "$0" "$@"

apt_install_missing mmdebstrap umoci skopeo

service=docker-model-runner
service_uid=10001
work="${repo_root}/build/image"
layout="${IMAGE_LAYOUT:-${work}/oci}"
tag="${IMAGE_TAG:-$(project_version)}"
mkdir -p "$work"

if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
    SOURCE_DATE_EPOCH="$(git -C "$repo_root" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH
created="$(date -u -d "@${SOURCE_DATE_EPOCH}" +%Y-%m-%dT%H:%M:%SZ)"

if [[ -n "${IMAGE_DEBS:-}" ]]; then
    read -r -a debs <<<"$IMAGE_DEBS"
else
    debs=("$("${repo_root}/packaging/build-deb.sh" | tail -n 1)"
          "$("${repo_root}/packaging/build-engine-deb.sh" | tail -n 1)")
fi
for deb in "${debs[@]}"; do
    [[ -f "$deb" ]] || die "no such package: ${deb}"
done
printf '%s\n' "${debs[@]}" | grep -q '/docker-model-plugin_[^/]*\.deb$' \
    || die "the packages (${debs[*]}) lack docker-model-plugin_*.deb"
printf '%s\n' "${debs[@]}" | grep -q '/docker-model-runner-llama-server_[^/]*\.deb$' \
    || die "the packages (${debs[*]}) lack docker-model-runner-llama-server_*.deb"
# The two .debs as a flat apt repository that mmdebstrap mounts into the root (file-mirror-automount
# hook): apt resolves their dependencies from Debian like any other package's, and dpkg, which
# runs chrooted, can read them (a .deb given by its host path it cannot).
repo="${work}/repo"
rm -rf "$repo" && mkdir -p "$repo"
cp "${debs[@]}" "$repo/"
(cd "$repo" && dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null)
includes="systemd-standalone-sysusers,ca-certificates"
for deb in "${debs[@]}"; do
    includes+=",$(dpkg-deb -f "$deb" Package)"
done
local_source="deb [trusted=yes] file://${repo} ./"

cleanroom_init
rootfs="${work}/rootfs.tar"
log "rootfs: Debian ${cleanroom_tail[0]} (essential) + ${debs[*]##*/}, SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}"
started=$SECONDS
# shellcheck disable=SC2016  # the hooks' "$1" is the root, expanded by mmdebstrap
cleanroom_run "${work}/build.log" "the image's package list" \
    --variant=essential --include="$includes" "${cleanroom_args[@]}" \
    --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --essential-hook="echo '${service}:x:${service_uid}:${service_uid}:Docker Model Runner:/var/lib/${service}:/usr/sbin/nologin' >> \"\$1/etc/passwd\"" \
    --essential-hook="echo '${service}:x:${service_uid}:' >> \"\$1/etc/group\"" \
    "${cleanroom_cache_out[@]}" \
    --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/archives/partial "$1"/var/cache/apt/*.bin' \
    --customize-hook="install -d -m 0750 -o ${service_uid} -g ${service_uid} \"\$1/var/lib/${service}\" \"\$1/var/lib/${service}/models\" \"\$1/var/log/${service}\"" \
    --customize-hook='rm -f "$1/etc/machine-id" && : > "$1/etc/machine-id"' \
    --customize-hook="grep -rlF 'file://${repo}' \"\$1/etc/apt\" | xargs --no-run-if-empty sed -i '\\|file://${repo}|d'" \
    "${cleanroom_tail[0]}" "$rootfs" "${cleanroom_tail[@]:2}" "$local_source"
log "rootfs: $(du -h "$rootfs" | cut -f1) in $((SECONDS - started)) s"

started=$SECONDS
rm -rf "$layout"
umoci init --layout "$layout"
umoci new --image "${layout}:${tag}"
umoci raw add-layer --image "${layout}:${tag}" --history.created="$created" \
    --history.created_by="mmdebstrap --variant=essential ${cleanroom_tail[0]} + ${debs[*]##*/}" \
    "$rootfs"
# The unit's environment (systemd/docker-model-runner.service), but listening on every address
# of the container's own network namespace (what reaches it is what the runtime publishes), and
# runner sockets in the daemon's default /tmp/model-runner-<uid>: mmdebstrap empties /run, and the
# container's /tmp is its own (the Kubernetes manifests mount an emptyDir on DMR_RUNTIME_DIR).
env_args=(
    --config.env="PATH=/usr/libexec/${service}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    --config.env="MODELS_PATH=/var/lib/${service}/models"
    --config.env="MODEL_RUNNER_LOG_DIR=/var/log/${service}"
    --config.env="DMR_CONFIG=/etc/${service}/config.yaml"
    --config.env="DMR_RUNNER_HOST=0.0.0.0"
    --config.env="DMR_RUNNER_PORT=12434"
    --config.env="NETRC=/dev/null"
    --config.env="HOME=/var/lib/${service}"
)
umoci config --image "${layout}:${tag}" --no-history --created="$created" \
    --author="Docker Model Runner (Python) maintainers" \
    --os=linux --architecture="$(dpkg --print-architecture)" \
    --config.user="${service_uid}:${service_uid}" \
    --config.entrypoint=/usr/bin/model-runner --config.cmd=serve \
    --config.workingdir="/var/lib/${service}" \
    --config.exposedports=12434/tcp \
    --config.volume="/var/lib/${service}" \
    --config.stopsignal=SIGTERM \
    "${env_args[@]}" \
    --config.label="org.opencontainers.image.title=docker-model-runner" \
    --config.label="org.opencontainers.image.version=${tag}" \
    --config.label="org.opencontainers.image.created=${created}" \
    --manifest.annotation="org.opencontainers.image.version=${tag}"
umoci gc --layout "$layout"
rm -rf "$rootfs" "$repo"

manifest_digest="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "${layout}/index.json")"
size="$(du -sb "${layout}/blobs" | cut -f1)"
log "image ${layout}:${tag}: manifest ${manifest_digest}, $((size / 1024 / 1024)) MiB compressed, ${SECONDS}s in all (umoci $((SECONDS - started)) s)"
# What the image was made of, beside the layout: a rebuild from the same packages and epoch must
# give the same manifest digest (tests/image checks it).
python3 - "$(dirname "$layout")/image.json" "oci:${layout}:${tag}" "$manifest_digest" "$size" \
    "$SOURCE_DATE_EPOCH" "$(realpath "${debs[@]}" | paste -sd' ')" <<'PY'
import json, sys
path, reference, digest, size, epoch, debs = sys.argv[1:]
with open(path, "w", encoding="utf-8") as out:
    json.dump({"reference": reference, "manifest_digest": digest, "compressed_bytes": int(size),
               "source_date_epoch": int(epoch), "debs": debs.split()}, out, indent=2)
PY

if [[ -n "${IMAGE_DEST:-}" ]]; then
    log "pushing to ${IMAGE_DEST}"
    skopeo copy --dest-tls-verify="${IMAGE_DEST_TLS_VERIFY:-true}" "oci:${layout}:${tag}" "$IMAGE_DEST" >&2
fi
echo "oci:${layout}:${tag}"
