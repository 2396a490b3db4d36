"""Schemathesis against a real daemon, the real llama-server and SmolLM2, from GET /openapi.json.

Every operation of the document is fuzzed with a bounded, reproducible number of cases:
the examples written in the document, schemathesis's coverage cases (boundaries, missing and
wrong-typed fields; on one path of each handler, the aliases share its code), then a few
generated ones, positive and negative, deterministic. Every answer must pass four checks: no
5xx, a documented status, a documented content type, a body that conforms to the documented
schema (server-sent events included, event by event).

Schemathesis runs as its command line (``python -m schemathesis.cli run``) in a subprocess:
its pytest plugin loads a schema from a fixture through pytest internals that pytest 9 no
longer has, while the command line depends on nothing of ours but a config file, a hooks
module (``tests/support/fuzz_hooks.py``) and the URL; its JUnit report names each operation
and failure.

The daemon is this module's own, with its own copy of the store, so deletes and purges change
nothing other tests see. The operations run in three passes: those that leave the store and
the runners as they are (inference included), then those that change them, then the purge.

Nothing leaves the machine: the daemon's HTTP(S) proxy and Hugging Face endpoint are a
loopback port that is bound but never listens (every connect is refused at once), loopback
exempt. A pull, a push or a remote inspect of a reference outside 127.0.0.1 therefore gets the
documented 502 ``registry_error``; that, and the 501 of the features llama.cpp does not have
(score, image generation), are the only 5xx the hooks module lets pass.

Generation is bounded before fuzzing: the model's runners get a 512-token context and
``--n-predict 16`` through ``POST /engines/_configure``, so no generated request generates for
long, whatever its ``max_tokens``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import schemathesis  # noqa: F401  (run as a CLI below; imported so a missing install fails, not skips)

from tests.support.daemon_fixtures import MODEL, REPO_ROOT, Daemon

pytestmark = [pytest.mark.llama_server, pytest.mark.timeout(2400)]

MAX_EXAMPLES = 5
REQUEST_TIMEOUT_SECONDS = 60
PASS_TIMEOUT_SECONDS = 600
# operationIds of the operations that change the store or the runners; purge runs alone, last.
CHANGING = (
    r"^(deleteModel|tagModel|repackageModel|loadModel|pullModel|pushModel|configureRunner"
    r"|unloadRunners)"
)
PURGE = r"^purgeModels$"
# The translating faces (Ollama, Anthropic, Responses): most of their cases reach the engine, so
# they get a pass (and a time limit) of their own.
FACES = r"^(ollama|createMessage|countMessageTokens|createResponse|getResponse|deleteResponse|listResponse)"
PASSES = (
    ("reading", ["--exclude-operation-id-regex", f"{CHANGING}|{PURGE}|{FACES}"]),
    ("faces", ["--include-operation-id-regex", FACES]),
    ("changing", ["--include-operation-id-regex", CHANGING]),
    ("purge", ["--include-operation-id-regex", PURGE]),
)
BOUNDED_SETTINGS = {"context-size": 512}
HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete")

# Schemathesis's settings. The only check left on besides the three conformance checks is
# not_a_server_error_except_named (tests/support/fuzz_hooks.py), which replaces
# not_a_server_error. The aliases (…ForBackend, …V1, …Alias) and the one- and three-segment
# reference paths run the same handlers as their main path: examples and generated cases
# only, no coverage phase. GET /logs?follow=true streams until the client leaves
# (tests/functional/test_lifecycle.py covers it), so follow stays false here.
CONFIG = f"""
workers = 1

[generation]
mode = "all"
max-examples = {MAX_EXAMPLES}
deterministic = true
database = "none"

[phases.stateful]
enabled = false

[checks]
not_a_server_error.enabled = false
response_headers_conformance.enabled = false
negative_data_rejection.enabled = false
positive_data_acceptance.enabled = false
missing_required_header.enabled = false
unsupported_method.enabled = false
allow_header_conformance.enabled = false
use_after_free.enabled = false
ensure_resource_availability.enabled = false
ignored_auth.enabled = false

[[operations]]
include-operation-id-regex = "(ForBackend[0-9]?|V1(_[0-9])?|Alias|[13])$"
phases.coverage.enabled = false

[[operations]]
include-operation-id = "getLogs"
parameters = {{ "query.follow" = false }}
"""


@pytest.fixture(scope="module")
def refusing_port() -> Iterator[int]:
    """Yield a loopback port that is bound but never listens: every connect is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.fixture(scope="module")
def fuzz_daemon(daemon_factory: Callable[..., Daemon], refusing_port: int) -> Daemon:
    """Start this module's daemon: own store copy, no way off the machine, short answers."""
    dead_end = f"http://127.0.0.1:{refusing_port}"
    loopback = "127.0.0.1,localhost,::1"
    daemon = daemon_factory(
        HTTP_PROXY=dead_end,
        HTTPS_PROXY=dead_end,
        ALL_PROXY=dead_end,
        http_proxy=dead_end,
        https_proxy=dead_end,
        all_proxy=dead_end,
        NO_PROXY=loopback,
        no_proxy=loopback,
        HF_ENDPOINT=dead_end,
        # One runner per mode, none evicted for another: no waits, no restarts mid-run.
        DMR_MAX_RUNNERS="3",
        DMR_MIN_RESIDENCY="0",
    )
    for mode, flags in (
        ("completion", ["--n-predict", "16"]),
        ("embedding", []),
        ("reranking", []),
    ):
        body = {"model": MODEL, "mode": mode, **BOUNDED_SETTINGS, "runtime-flags": flags}
        answer = daemon.post("/engines/_configure", json=body)
        assert answer.status_code == 202, answer.text
    return daemon


def documented_operations(daemon: Daemon) -> set[str]:
    """Return ``"METHOD /path"`` of every operation the daemon's document lists."""
    document = requests.get(daemon.url("/openapi.json"), timeout=10).json()
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def run_pass(daemon: Daemon, workdir: Path, name: str, selection: list[str]) -> tuple[str, Path]:
    """Run schemathesis on the operations ``selection`` picks; return its output and report."""
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    junit = workdir / f"junit-{name}.xml"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        daemon.url("/openapi.json"),
        "--url",
        daemon.base_url,
        "--phases",
        "examples,coverage,fuzzing",
        "--request-timeout",
        str(REQUEST_TIMEOUT_SECONDS),
        "--report",
        "junit",
        "--report-junit-path",
        str(junit),
        "--no-color",
        *selection,
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.support.fuzz_hooks",
        "PYTHONPATH": str(REPO_ROOT),
        # Its requests go to 127.0.0.1 only; no proxy of the user's may intercept them.
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
    }
    done = subprocess.run(
        command,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PASS_TIMEOUT_SECONDS,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"schemathesis ({name} pass) found problems:\n{output[-20000:]}"
    return output, junit


def operations_in_report(junit: Path) -> set[str]:
    """Return the operations (``"METHOD /path"``) a JUnit report has a test case for."""
    return {case.attrib["name"] for case in ET.parse(junit).getroot().iter("testcase")}


def test_schemathesis_finds_nothing(fuzz_daemon: Daemon, tmp_path: Path) -> None:
    """Every operation is fuzzed; no 5xx, every answer as documented."""
    started = time.monotonic()
    tested: set[str] = set()
    generated = 0
    for name, selection in PASSES:
        output, junit = run_pass(fuzz_daemon, tmp_path, name, selection)
        tested |= operations_in_report(junit)
        found = re.search(r"(\d+) generated", output)
        generated += int(found.group(1)) if found else 0
    # The command line leaves out the operation that served it the schema (it counts 88 of
    # the 89); tests/component/test_openapi.py checks that answer.
    missing = documented_operations(fuzz_daemon) - tested - {"GET /openapi.json"}
    assert not missing, f"operations schemathesis never ran: {sorted(missing)}"
    print(
        f"\nschemathesis: {len(tested)} operations, {generated} cases, "
        f"{time.monotonic() - started:.0f}s"
    )
