"""Sections 6 and 7: API latency with a big store, and pulling from a loopback registry.

Section 6 fills a scratch store with small synthetic GGUF models (``tests/support/gguf_files``
writes them with llama.cpp's own ``GGUFWriter``; ``orchestrator.store.builder`` packages them),
starts a daemon on it and times ``GET`` requests on one kept-alive connection, the endpoints
interleaved.

Section 7 pushes the SmolLM2 artifact into Debian's ``docker-registry`` on 127.0.0.1, then
alternates a daemon pull (``POST /models/create`` into an emptied store, the worker's RSS
sampled every 10 ms) with what a careful user would do by hand: ``curl`` the GGUF blob, then
``sha256sum`` it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from bench.client import request_json, timed_get
from bench.procs import (
    BenchError,
    free_port,
    peak_rss_bytes,
    rss_bytes,
    wait_http_ready,
)
from bench.targets import Daemon, Workspace, start_daemon
from orchestrator.unixhttp import open_connection

API_PATHS = ("/version", "/models", "/engines/v1/models", "/engines/ps")
CREATED = datetime(2025, 1, 1, tzinfo=UTC)
RSS_SAMPLE_SECONDS = 0.01
PULL_TIMEOUT_SECONDS = 300.0
REGISTRY_REPOSITORY = "bench/smollm2"


def make_synthetic_store(models_path: Path, count: int) -> float:
    """Write ``count`` distinct tiny GGUF models into a store; return the seconds it took."""
    from orchestrator.store.builder import build_gguf_artifact, store_artifact
    from orchestrator.store.store import Store
    from tests.support.gguf_files import write_llama_model

    began = time.monotonic()
    store = Store(models_path)
    sources = models_path.parent / "synthetic-gguf"
    sources.mkdir(parents=True, exist_ok=True)
    for index in range(count):

        def mark(writer: Any, index: int = index) -> None:
            writer.add_uint32("bench.index", index)

        path = write_llama_model(sources / f"m{index:03d}.gguf", n_layers=1, extra=mark)
        artifact = build_gguf_artifact(path, created=CREATED)
        store_artifact(store, artifact, [f"bench/synthetic-{index:03d}:latest"])
    return time.monotonic() - began


def api_latency(daemon: Daemon, *, requests: int) -> dict[str, Any]:
    """Time ``requests`` GETs of each of :data:`API_PATHS` (interleaved) on one connection."""
    samples: dict[str, list[float]] = {path: [] for path in API_PATHS}
    sizes: dict[str, int] = {}
    failures: list[str] = []
    conn = open_connection(daemon.address, 10.0)
    try:
        for index in range(requests + 5):  # the first 5 rounds warm up and are dropped
            for path in API_PATHS:
                try:
                    seconds, status, size = timed_get(conn, path)
                except (OSError, http.client.HTTPException) as ex:
                    # gunicorn may close an idle keep-alive connection; reconnect and go on.
                    conn.close()
                    conn = open_connection(daemon.address, 10.0)
                    failures.append(f"{path}: {ex!r}")
                    if len(failures) > 50:
                        raise BenchError(f"too many failed GETs: {failures[-3:]}") from ex
                    continue
                if status != 200:
                    failures.append(f"{path}: status {status}")
                    continue
                sizes[path] = size
                if index >= 5:
                    samples[path].append(seconds)
    finally:
        conn.close()
    status, body = request_json(daemon.address, "GET", "/models")
    listed = len(json.loads(body)) if status == 200 else -1
    return {
        "samples_s": samples,
        "body_bytes": sizes,
        "failures": failures,
        "models_listed": listed,
    }


def _registry_config(root: Path, port: int) -> str:
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  formatter: text\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        "  delete:\n    enabled: true\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        "  secret: bench-only\n"
    )


def start_registry(ws: Workspace, binary: str) -> str:
    """Start ``docker-registry serve`` on a free loopback port; return ``127.0.0.1:<port>``."""
    root = ws.scratch / "registry"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "registry.yml"
    config.write_text(_registry_config(root, port))
    log_path = ws.scratch / "logs" / "registry.log"
    proc = ws.procs.spawn([binary, "serve", str(config)], log_path=log_path)
    address = f"127.0.0.1:{port}"
    wait_http_ready(proc, address, "/v2/", timeout=30.0, log_path=log_path)
    return address


def push_model(ws: Workspace, registry: str) -> dict[str, Any]:
    """Push the SmolLM2 artifact to ``registry``; return its reference, blob and sizes."""
    from orchestrator.registry.client import RegistryClient
    from orchestrator.store.builder import build_gguf_artifact
    from orchestrator.store.reference import parse_reference

    artifact = build_gguf_artifact(ws.model_gguf, created=CREATED)
    reference = f"{registry}/{REGISTRY_REPOSITORY}:latest"
    began = time.monotonic()
    with RegistryClient() as client:
        client.push_artifact(artifact, parse_reference(reference))
    layer = max(artifact.layers, key=lambda item: item.size)
    total = sum(item.size for item in artifact.layers)
    total += len(artifact.config_bytes) + len(artifact.manifest_bytes)
    return {
        "reference": reference,
        "push_s": time.monotonic() - began,
        "gguf_digest": layer.digest,
        "gguf_bytes": layer.size,
        "artifact_bytes": total,
    }


class RssSampler:
    """Sample a process's RSS every 10 ms in a thread (bounded by :meth:`stop`)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, rss_bytes(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self.peak = max(self.peak, rss_bytes(self.pid))


def _daemon_pull(daemon: Daemon, pushed: dict[str, Any]) -> dict[str, Any]:
    reference = pushed["reference"]
    status, body = request_json(daemon.address, "DELETE", f"/models/{reference}?force=true")
    if status not in (200, 404):
        raise BenchError(f"DELETE /models/{reference} answered {status}: {body[:200]!r}")
    blob = daemon.models_path / "blobs" / "sha256" / pushed["gguf_digest"].split(":", 1)[1]
    if blob.exists():
        raise BenchError(
            f"the GGUF blob {blob} is still in the store after DELETE; a pull would be cached"
        )
    worker = daemon.worker_pid()
    rss_before = rss_bytes(worker)
    payload = json.dumps({"from": reference}).encode()
    conn = open_connection(daemon.address, PULL_TIMEOUT_SECONDS)
    lines: list[bytes] = []
    with RssSampler(worker) as sampler:
        began = time.monotonic()
        try:
            conn.request(
                "POST",
                "/models/create",
                body=payload,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
            )
            response = conn.getresponse()
            text = response.read()
        finally:
            conn.close()
        seconds = time.monotonic() - began
    lines = [line for line in text.splitlines() if line.strip()]
    last = json.loads(lines[-1]) if lines else {}
    cached = any(b"Using cached model" in line for line in lines)
    ok = response.status == 200 and last.get("type") == "success" and not cached and blob.exists()
    return {
        "ok": ok,
        "status": response.status,
        "last_line": lines[-1][:300].decode(errors="replace") if lines else "",
        "seconds": seconds,
        "mib_s": pushed["artifact_bytes"] / seconds / 2**20,
        "rss_before_bytes": rss_before,
        "rss_peak_bytes": sampler.peak,
        "hwm_bytes": peak_rss_bytes(worker),
    }


def _curl_pull(registry: str, pushed: dict[str, Any], scratch: Path) -> dict[str, Any]:
    target = scratch / "curl-blob"
    target.unlink(missing_ok=True)
    url = f"http://{registry}/v2/{REGISTRY_REPOSITORY}/blobs/{pushed['gguf_digest']}"
    began = time.monotonic()
    subprocess.run(
        ["curl", "-sS", "-f", "-o", str(target), url], check=True, timeout=PULL_TIMEOUT_SECONDS
    )
    fetched = time.monotonic()
    done = subprocess.run(
        ["sha256sum", str(target)], check=True, capture_output=True, timeout=PULL_TIMEOUT_SECONDS
    )
    checked = time.monotonic()
    digest = "sha256:" + done.stdout.split()[0].decode()
    target.unlink(missing_ok=True)
    size = pushed["gguf_bytes"]
    return {
        "ok": digest == pushed["gguf_digest"],
        "curl_s": fetched - began,
        "sha256sum_s": checked - fetched,
        "curl_mib_s": size / (fetched - began) / 2**20,
        "curl_sha256sum_mib_s": size / (checked - began) / 2**20,
    }


def pull(
    ws: Workspace, *, registry_bin: str | None, rounds: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Section 7: daemon pull vs ``curl`` + ``sha256sum``, alternating, ``rounds`` times each."""
    if registry_bin is None or shutil.which("curl") is None or shutil.which("sha256sum") is None:
        return {"skipped": "docker-registry, curl or sha256sum is not installed (make deps)"}
    registry = start_registry(ws, registry_bin)
    pushed = push_model(ws, registry)
    log(
        f"  pushed {pushed['artifact_bytes'] / 2**20:.1f} MiB to {pushed['reference']} "
        f"in {pushed['push_s']:.1f}s"
    )
    daemon = start_daemon(ws, "pull", ws.scratch / "pull" / "models")
    data: dict[str, Any] = {
        "pushed": pushed,
        "daemon": [],
        "curl": [],
        "daemon_rss_idle_bytes": rss_bytes(daemon.worker_pid()),
    }
    try:
        for round_index in range(rounds):
            order = ("daemon", "curl") if round_index % 2 == 0 else ("curl", "daemon")
            for kind in order:
                if kind == "daemon":
                    data["daemon"].append(_daemon_pull(daemon, pushed))
                else:
                    data["curl"].append(_curl_pull(registry, pushed, ws.scratch))
            d, c = data["daemon"][-1], data["curl"][-1]
            log(
                f"  round {round_index + 1}/{rounds}: daemon {d['mib_s']:.0f} MiB/s "
                f"(peak RSS {d['rss_peak_bytes'] / 2**20:.0f} MiB), "
                f"curl {c['curl_mib_s']:.0f} MiB/s, "
                f"curl+sha256sum {c['curl_sha256sum_mib_s']:.0f} MiB/s"
            )
    finally:
        ws.procs.stop(daemon.proc)
    data["python_sha256_mib_s"] = _python_hash_rate(ws.model_gguf)
    return data


def _python_hash_rate(path: Path) -> float:
    """Return hashlib's sha256 rate over ``path`` (page cache), for scale."""
    digest = hashlib.sha256()
    began = time.monotonic()
    size = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size / (time.monotonic() - began) / 2**20
