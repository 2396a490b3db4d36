#!/usr/bin/env bash
# End-to-end test of the packages (make package-test). Needs root (or sudo) and apt.
#
#  1. builds the .deb and the .rpm; checks the rpm with rpm -qlp / rpm -qp --scripts;
#  2. apt-get install ./docker-model-plugin_*.deb (and the engine .deb when one was built with
#     `make deb-engine`; else the provisioned engine through LLAMA_SERVER_PATH);
#  3. checks that every file lands where the unit expects it and `systemd-analyze verify`s it;
#     that the configuration files (secrets: HF_TOKEN, api_key) are 0640 root:docker-model-runner,
#     also after a reinstall, and that a reinstall keeps an admin's own override; that the
#     logrotate snippet parses (logrotate --debug);
#  4. starts the installed daemon as the unit's ExecStart would (systemd is not PID 1 here):
#     its User=/Group=, environment (Environment= + EnvironmentFile=), UMask=, NoNewPrivileges=,
#     the directories it declares, a new session, and a notification socket that must receive
#     READY=1 from the main PID (Type=notify, NotifyAccess=main);
#  5. imports the real test model with the installed `model-runner package` as the service
#     user, answers a chat request with curl, lists models with `docker model`;
#  6. stops it as systemd would (TERM to the main PID, TimeoutStopSec, then KILL to the
#     session), checks no engine survives; rotates its logs with the packaged logrotate snippet;
#  7. apt-get purge, and checks that only the system user (kept by policy) remains; purges the
#     packages the install pulled in (python3-falcon & co), leaving the machine as it was.
#
# Environment: KEEP_INSTALLED=1 leaves the package installed and the daemon stopped.
set -euo pipefail
# shellcheck source=packaging/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
[[ "$(id -u)" == 0 ]] || exec sudo --preserve-env=PACKAGES_DIR,KEEP_INSTALLED "$0" "$@"

PY=/usr/bin/python3   # the helpers run on Debian's interpreter, like the package
service=docker-model-runner
unit=/lib/systemd/system/${service}.service
pass() { printf 'PASS: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; exit 1; }
step() { printf '\n== %s\n' "$*"; }

tmp="$(mktemp -d /tmp/package-test.XXXXXX)"
chmod 0755 "$tmp"
daemon_pid=""
notify_pid=""
installed_engine_pkg=""

stop_daemon() {
    # systemd with KillMode=mixed: SIGTERM to the main process only, wait TimeoutStopSec, then
    # SIGKILL to everything left in the cgroup. Without systemd the service's cgroup is
    # approximated by "every process of the service user" (runners start their own sessions).
    local pid="$1" timeout="$2" deadline
    kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "daemon ignored SIGTERM for ${timeout}s; SIGKILL to the service's processes"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    if [[ -n "${user:-}" ]]; then pkill -KILL -u "$user" 2>/dev/null || true; fi
}

# The packages installed now, one name a line (sorted), to purge afterwards exactly what the
# install pulled in (python3-falcon & co): the machine is left as the test found it, so a later
# run (or a later build) sees no dependency this one installed.
installed_packages() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" { print $2 }' | sort
}
purge_pulled_in() {
    [[ -f "${tmp}/before.txt" ]] || return 0
    local pulled
    pulled="$(comm -13 "${tmp}/before.txt" <(installed_packages) | tr '\n' ' ')"
    [[ -z "${pulled// /}" ]] && return 0
    echo "purging what the install pulled in: ${pulled}"
    # shellcheck disable=SC2086  # one word a package
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq ${pulled} >/dev/null
}

cleanup() {
    local status=$?
    [[ -n "$daemon_pid" ]] && stop_daemon "$daemon_pid" 10
    [[ -n "$notify_pid" ]] && { kill "$notify_pid" 2>/dev/null || true; wait "$notify_pid" 2>/dev/null || true; }
    if ((status != 0)) && [[ -f "${tmp}/daemon.log" ]]; then
        log "daemon log (last 40 lines):"; tail -n 40 "${tmp}/daemon.log" >&2
    fi
    if ((status != 0)) && [[ "${KEEP_INSTALLED:-0}" != 1 ]]; then
        apt-get purge -y -qq docker-model-plugin ${installed_engine_pkg} >/dev/null 2>&1 || true
        purge_pulled_in || true
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT

step "build"
deb="$("${repo_root}/packaging/build-deb.sh" | tail -n 1)"
rpm_file="$("${repo_root}/packaging/build-rpm.sh" | tail -n 1)"
printf '%s (%s)\n%s (%s)\n' "$deb" "$(du -h "$deb" | cut -f1)" "$rpm_file" "$(du -h "$rpm_file" | cut -f1)"

step "rpm contents and scriptlets"
# The RPM is built in a chroot (build-rpm.sh); reading it here needs the host's rpm.
# Host tools, installed before the package list is taken (they stay, as rpm does).
apt_install_missing rpm logrotate
rpm_list="$(rpm -qlp "$rpm_file")"
for path in /usr/bin/model-runner /usr/bin/docker-model /usr/libexec/docker/cli-plugins/docker-model \
    /usr/lib/systemd/system/${service}.service /usr/lib/sysusers.d/${service}.conf \
    /usr/lib/tmpfiles.d/${service}.conf /etc/${service}/config.yaml /etc/sysconfig/${service} \
    /etc/logrotate.d/${service} /var/lib/${service}/models /usr/share/man/man1/model-runner.1.gz; do
    grep -qx "$path" <<<"$rpm_list" || fail "rpm lacks ${path}"
done
# Mode, owner, group, path (rpm -qlv would cut the group name to 8 characters).
rpm_modes="$(rpm -qp --queryformat '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]' "$rpm_file")"
for path in /etc/sysconfig/${service} /etc/${service}/config.yaml; do
    grep -qxF -- "-rw-r----- root ${service} ${path}" <<<"$rpm_modes" \
        || fail "rpm installs $(grep -F -- " ${path}" <<<"$rpm_modes" || echo "${path}: nothing"), not 0640 root:${service}"
done
pass "rpm: the environment file and config.yaml are 0640 root:${service}"
grep -q '/site-packages/orchestrator/cli.py$' <<<"$rpm_list" || fail "rpm lacks the orchestrator package"
pass "rpm -qlp lists the daemon, CLI plugin, unit, sysusers, tmpfiles, config and man pages"
rpm_scripts="$(rpm -qp --scripts "$rpm_file")"
for pattern in 'systemd-sysusers' "preset ${service}.service" "disable --now ${service}.service" \
    "try-restart ${service}.service" "systemd-tmpfiles --create ${service}.conf" 'u docker-model-runner'; do
    grep -qF -- "$pattern" <<<"$rpm_scripts" || fail "rpm scriptlets lack '${pattern}'"
done
pass "rpm -qp --scripts: sysusers in %pre, tmpfiles + preset in %post, disable --now in %preun, try-restart in %postun"
rpm -qp --requires "$rpm_file" | grep -q 'python3dist(falcon) >= 3.1' || fail "rpm does not require falcon"
pass "rpm requires: $(rpm -qp --requires "$rpm_file" | grep -c .) entries, e.g. python3dist(falcon) >= 3.1"

step "install"
if dpkg-query -W -f='${Status}' docker-model-plugin 2>/dev/null | grep -q 'ok installed'; then
    log "docker-model-plugin is already installed; purging it first"
    apt-get purge -y -qq docker-model-plugin >/dev/null
fi
engine_deb="$(find "$packages_dir" -maxdepth 1 -name 'docker-model-runner-llama-server_*.deb' 2>/dev/null | sort | tail -n 1)"
install_list=("$deb")
installed_packages >"${tmp}/before.txt"
if [[ -n "$engine_deb" ]]; then
    install_list+=("$engine_deb")
    installed_engine_pkg=docker-model-runner-llama-server
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${install_list[@]}" >"${tmp}/apt.log" 2>&1 \
    || { cat "${tmp}/apt.log" >&2; fail "apt-get install ${install_list[*]}"; }
pass "apt-get install ${install_list[*]##*/}"

step "files where the unit expects them"
[[ -f "$unit" ]] || fail "unit not installed at ${unit}"
read -r -a exec_start <<<"$($PY "${repo_root}/packaging/unit_exec.py" get "$unit" ExecStart)"
[[ -x "${exec_start[0]}" ]] || fail "ExecStart binary ${exec_start[0]} is not executable"
user="$($PY "${repo_root}/packaging/unit_exec.py" get "$unit" User)"
group="$($PY "${repo_root}/packaging/unit_exec.py" get "$unit" Group)"
getent passwd "$user" >/dev/null || fail "sysusers did not create user ${user}"
getent group "$group" >/dev/null || fail "sysusers did not create group ${group}"
id -nG "$user" | tr ' ' '\n' | grep -qx render || fail "${user} is not in group render (GPU nodes)"
pass "user $(getent passwd "$user") groups: $(id -nG "$user")"
plugin=/usr/libexec/docker/cli-plugins/docker-model
[[ -x "$plugin" && "$(readlink -f "$plugin")" == /usr/bin/docker-model ]] || fail "CLI plugin link ${plugin}"
for path in /etc/${service}/config.yaml /etc/default/${service} /usr/lib/sysusers.d/${service}.conf \
    /usr/lib/tmpfiles.d/${service}.conf /usr/share/man/man1/model-runner.1.gz /usr/share/man/man1/docker-model.1.gz; do
    [[ -f "$path" ]] || fail "${path} missing"
done
for spec in $($PY "${repo_root}/packaging/unit_exec.py" get "$unit" EnvironmentFile); do
    [[ "$spec" == -* ]] || [[ -f "$spec" ]] || fail "EnvironmentFile ${spec} missing"
done
# tmpfiles.d (postinst) must have created the state and log directories for the service user.
for dir in /var/lib/${service} /var/lib/${service}/models /var/log/${service}; do
    [[ "$(stat -c '%U:%G %a' "$dir")" == "${user}:${group} 750" ]] \
        || fail "${dir} is $(stat -c '%U:%G %a' "$dir"), expected ${user}:${group} 750"
done
pass "ExecStart ${exec_start[*]}, config, environment file, snippets, man pages, CLI plugin, state/log dirs"

# Secrets (HF_TOKEN, proxy credentials, api_key): root and the service group only.
config_files=(/etc/default/${service} /etc/${service}/config.yaml)
check_config_modes() {
    local path
    for path in "${config_files[@]}"; do
        [[ "$(stat -c '%U:%G %a' "$path")" == "root:${group} 640" ]] \
            || fail "${path} is $(stat -c '%U:%G %a' "$path") ${1}, expected root:${group} 640"
    done
}
check_config_modes "after the install"
dpkg-statoverride --list "${config_files[@]}"
setpriv --reuid="$user" --regid="$group" --init-groups cat /etc/default/${service} >/dev/null \
    || fail "the service user cannot read /etc/default/${service}"
if setpriv --reuid=nobody --regid=nogroup --clear-groups cat /etc/default/${service} >/dev/null 2>&1; then
    fail "user nobody can read /etc/default/${service}"
fi
pass "environment file and config.yaml: 0640 root:${group}, readable by ${user}, not by nobody"
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >"${tmp}/reinstall.log" 2>&1 \
    || { cat "${tmp}/reinstall.log" >&2; fail "dpkg -i ${deb##*/} (reinstall)"; }
check_config_modes "after a reinstall"
# An admin's own choice survives an upgrade (here a reinstall): the postinst leaves it alone.
dpkg-statoverride --remove /etc/default/${service}
dpkg-statoverride --update --add root root 0600 /etc/default/${service}
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >"${tmp}/reinstall.log" 2>&1 \
    || { cat "${tmp}/reinstall.log" >&2; fail "dpkg -i ${deb##*/} (reinstall)"; }
[[ "$(stat -c '%U:%G %a' /etc/default/${service})" == "root:root 600" ]] \
    || fail "a reinstall reset the admin's 0600 root:root to $(stat -c '%U:%G %a' /etc/default/${service})"
dpkg-statoverride --remove /etc/default/${service}
dpkg-statoverride --update --add root "$group" 0640 /etc/default/${service}
pass "a reinstall keeps 0640 root:${group}, and keeps an admin's own dpkg-statoverride"
logrotate_conf=/etc/logrotate.d/${service}
[[ -f "$logrotate_conf" ]] || fail "${logrotate_conf} missing"
logrotate --debug --state "${tmp}/logrotate.state" "$logrotate_conf" >"${tmp}/logrotate.log" 2>&1 \
    || { cat "${tmp}/logrotate.log" >&2; fail "logrotate --debug ${logrotate_conf}"; }
if grep -qi 'error' "${tmp}/logrotate.log"; then
    cat "${tmp}/logrotate.log" >&2; fail "logrotate --debug ${logrotate_conf} reports errors"
fi
pass "logrotate --debug ${logrotate_conf}: parses, rotates /var/log/${service}/*.log as ${user}"
wants=/etc/systemd/system/multi-user.target.wants/${service}.service
[[ "$(readlink -f "$wants")" == "$(readlink -f "$unit")" ]] || fail "postinst did not enable the service (${wants})"
pass "postinst enabled the service: ${wants} -> $(readlink "$wants")"
systemd-analyze verify "$unit" || fail "systemd-analyze verify ${unit}"
pass "systemd-analyze verify ${unit}: clean"
systemd-analyze security --offline=yes "$unit" 2>/dev/null | tail -n 1
"$plugin" docker-cli-plugin-metadata | $PY -c 'import json,sys; m=json.load(sys.stdin); assert m["SchemaVersion"]=="0.1.0", m; print("plugin metadata:", m)'

step "configure as documented (/etc/default/${service})"
port="$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
origin="http://allowed.example.test"
{
    echo "DMR_RUNNER_PORT=${port}"
    echo "DMR_RUNNER_HOST=127.0.0.1"
    echo "DMR_ORIGINS=${origin}"
    echo "DMR_KEEP_ALIVE=5m"
} >>/etc/default/${service}
if [[ -z "$installed_engine_pkg" ]]; then
    # The provisioned engine lives under root's home, which the service user cannot read (and
    # ProtectHome= hides): copy it where it can, as an admin would for LLAMA_SERVER_PATH.
    engine_src="$("${repo_root}/bin/provision-engine" | tail -n 1)"
    mkdir -p "${tmp}/engine" && cp -a "${engine_src}/." "${tmp}/engine/"
    chmod -R a+rX "${tmp}/engine"
    echo "LLAMA_SERVER_PATH=${tmp}/engine" >>/etc/default/${service}
    log "engine: provisioned build via LLAMA_SERVER_PATH (make deb-engine builds the package)"
else
    [[ -x /usr/libexec/docker-model-runner/llama-server ]] || fail "engine package lacks llama-server"
    log "engine: docker-model-runner-llama-server package, found on the unit's PATH"
fi
tail -n 5 /etc/default/${service}

step "import the test model with the installed CLI, as ${user}"
model_src="$("${repo_root}/bin/provision-model" | tail -n 1)"
cp "$model_src" "${tmp}/model.gguf" && chmod 0644 "${tmp}/model.gguf"
mapfile -d '' unit_env < <($PY "${repo_root}/packaging/unit_exec.py" env "$unit")
models_path="$(printf '%s\n' "${unit_env[@]}" | sed -n 's/^MODELS_PATH=//p')"
[[ "$models_path" == /var/lib/${service}/models ]] || fail "MODELS_PATH is '${models_path}'"
setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs --inh-caps=-all \
    env -i "${unit_env[@]}" /usr/bin/model-runner package --gguf "${tmp}/model.gguf" \
    ai/smollm2:latest ai/smollm2:135M-Q4_1
[[ "$(stat -c %U "${models_path}/models.json" 2>/dev/null || stat -c %U "${models_path}")" == "$user" ]] \
    || fail "store files are not owned by ${user}"
pass "model-runner package stored ai/smollm2 in ${models_path}"

step "start the daemon as the unit's ExecStart"
while read -r dir mode; do
    # What systemd does for StateDirectory= & co before ExecStart=.
    install -d -m "$mode" -o "$user" -g "$group" "$dir"
done < <($PY "${repo_root}/packaging/unit_exec.py" dirs "$unit")
umask_value="$($PY "${repo_root}/packaging/unit_exec.py" get "$unit" UMask)"
stop_timeout="$($PY "${repo_root}/packaging/unit_exec.py" get "$unit" TimeoutStopSec)"
notify_socket="${tmp}/notify.sock"
$PY "${repo_root}/packaging/notify_listener.py" "$notify_socket" 90 >"${tmp}/notify.log" &
notify_pid=$!
for _ in $(seq 50); do [[ -S "$notify_socket" ]] && break; sleep 0.1; done
(
    umask "${umask_value:-0022}"
    exec setsid setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs --inh-caps=-all \
        env -i "${unit_env[@]}" NOTIFY_SOCKET="$notify_socket" "${exec_start[@]}"
) </dev/null >"${tmp}/daemon.log" 2>&1 &
daemon_pid=$!
echo "daemon pid ${daemon_pid}: ${exec_start[*]} as ${user}, umask ${umask_value}, port ${port}"
wait "$notify_pid" || fail "no READY=1 on NOTIFY_SOCKET within 90 s (Type=notify)"
notify_pid=""
cat "${tmp}/notify.log"
grep -q "pid=${daemon_pid} .*READY=1" "${tmp}/notify.log" \
    || fail "READY=1 did not come from the main PID ${daemon_pid} (NotifyAccess=main would drop it)"
pass "READY=1 from the main PID"
base="http://127.0.0.1:${port}"
deadline=$((SECONDS + 60))
until curl -fsS "${base}/" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "daemon did not answer on ${base} within 60 s"
    kill -0 "$daemon_pid" 2>/dev/null || fail "daemon exited"
    sleep 0.5
done
ps -o pid,user,group,sid,args -p "$daemon_pid" --ppid "$daemon_pid"

step "requests"
curl -fsS "${base}/models" | $PY -c 'import json,sys; tags=[t for m in json.load(sys.stdin) for t in m.get("tags",[])]; print("models:", tags); assert any("ai/smollm2" in t for t in tags)'
pass "GET /models lists ai/smollm2"
chat="$(curl -fsS --max-time 120 "${base}/engines/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model": "ai/smollm2", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 24}')"
$PY -c 'import json,sys; r=json.loads(sys.argv[1]); c=r["choices"][0]["message"]["content"]; print("answer:", repr(c)); print("usage:", r.get("usage")); assert c.strip()' "$chat" \
    || fail "chat completion: ${chat}"
pass "POST /engines/v1/chat/completions answered"
code="$(curl -s -o /dev/null -w '%{http_code}' -H "Origin: ${origin}" "${base}/engines/v1/models")"
[[ "$code" == 200 ]] || fail "allowed origin got HTTP ${code}"
code="$(curl -s -o /dev/null -w '%{http_code}' -H 'Origin: http://evil.example.test' "${base}/engines/v1/models")"
[[ "$code" == 403 ]] || fail "foreign origin got HTTP ${code}, expected 403"
pass "DMR_ORIGINS from the environment file: ${origin} allowed, others 403"
MODEL_RUNNER_HOST="$base" docker model version || fail "docker model version"
MODEL_RUNNER_HOST="$base" docker model list || fail "docker model list"
pass "docker model (CLI plugin) talks to the service"
find /run/${service} -maxdepth 3 -printf '%M %u %p\n' | head -n 10
engine_pid="$(pgrep -u "$user" -f llama-server | head -n 1 || true)"
[[ -n "$engine_pid" ]] || fail "no llama-server runs as ${user}"
worker_pid="$(ps -o ppid= -p "$engine_pid" | tr -d ' ')"
[[ "$(ps -o ppid= -p "$worker_pid" | tr -d ' ')" == "$daemon_pid" ]] \
    || fail "llama-server ${engine_pid} is not a child of the daemon's worker"
ps -o pid,ppid,sid,user,args -p "$engine_pid" | cut -c1-150
pass "llama-server runs as ${user}, child of the gunicorn worker ${worker_pid}, in its own session"

step "stop (KillMode=mixed, TimeoutStopSec=${stop_timeout})"
started=$SECONDS
kill -TERM "$daemon_pid"
deadline=$((SECONDS + ${stop_timeout%s}))
while kill -0 "$daemon_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
kill -0 "$daemon_pid" 2>/dev/null && fail "daemon still runs ${stop_timeout} after SIGTERM (systemd would SIGKILL)"
wait "$daemon_pid" && status=0 || status=$?
daemon_pid=""
echo "daemon exited with status ${status} after $((SECONDS - started)) s"
sleep 0.5
left="$(pgrep -u "$user" -a || true)"
[[ -z "$left" ]] || { pkill -KILL -u "$user" || true; fail "processes left after stop: ${left}"; }
pass "SIGTERM stopped the daemon and every runner within TimeoutStopSec"
tail -n 5 "${tmp}/daemon.log"
find /var/log/${service} -maxdepth 1 -printf "%M %u %s %p\n"
logrotate --force --state "${tmp}/logrotate.state" "$logrotate_conf" \
    || fail "logrotate --force ${logrotate_conf}"
rotated="$(find /var/log/${service} -maxdepth 1 -name 'inference.log-*' -user "$user" | head -n 1)"
[[ -n "$rotated" && -s "$rotated" ]] || fail "logrotate left no rotated inference.log owned by ${user}"
[[ ! -s /var/log/${service}/inference.log ]] || fail "copytruncate did not empty inference.log"
pass "logrotate --force: ${rotated##*/} (owned by ${user}), inference.log emptied in place"

if [[ "${KEEP_INSTALLED:-0}" == 1 ]]; then
    log "KEEP_INSTALLED=1: leaving the package installed"
    exit 0
fi

step "purge"
dpkg -L docker-model-plugin ${installed_engine_pkg} >"${tmp}/files.txt"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq docker-model-plugin ${installed_engine_pkg} >/dev/null
left_files=""
while read -r path; do
    [[ -d "$path" ]] && continue         # shared directories (/usr/bin, /etc/default) stay
    [[ -e "$path" || -L "$path" ]] && left_files+="${path} "
done <"${tmp}/files.txt"
[[ -z "$left_files" ]] || fail "files left after purge: ${left_files}"
for dir in /etc/${service} /var/lib/${service} /var/log/${service} /run/${service} \
    /usr/lib/python3/dist-packages/orchestrator /usr/libexec/docker-model-runner "$wants" \
    /var/lib/systemd/deb-systemd-helper-enabled/${service}.service.dsh-also; do
    [[ ! -e "$dir" ]] || fail "${dir} left after purge"
done
for path in "${config_files[@]}"; do
    ! dpkg-statoverride --list "$path" >/dev/null || fail "dpkg-statoverride entry for ${path} left after purge"
done
getent passwd "$user" >/dev/null && echo "kept by policy: system user $(getent passwd "$user")"
pass "purge removed every file, the store, the logs, the configuration and the enablement"
purge_pulled_in
left_packages="$(comm -13 "${tmp}/before.txt" <(installed_packages) | tr '\n' ' ')"
[[ -z "${left_packages// /}" ]] || fail "packages the install pulled in are still installed: ${left_packages}"
pass "the packages the install pulled in (Depends) are purged too: the machine is as it was"
echo
echo "package-test: all checks passed"
