"""``docker model`` through the real ``docker`` client binary against the real daemon.

The plugin is installed with ``docker-model install-plugin`` into a temporary ``DOCKER_CONFIG``;
every command runs as ``docker model ...`` (the client runs our launcher with ``model ...``).
One daemon (the ``daemon`` fixture, seeded with ``ai/smollm2``) serves the whole module; the
tests run in file order and build on each other only where a docstring says so.
"""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.daemon_fixtures import Daemon
from tests.support.docker_cli import DOCKER, docker_model, ok, plugin_env
from tests.support.processes import free_port, stop_process
from tests.support.registry_fixtures import RegistryServer

pytestmark = [pytest.mark.llama_server]

@pytest.fixture(scope="module")
def docker_env(tmp_path_factory: pytest.TempPathFactory, daemon: Daemon) -> dict[str, str]:
    """Return the environment of ``docker model`` commands: plugin installed, host set."""
    return plugin_env(
        tmp_path_factory.mktemp("docker-config"), daemon.base_url,
        DOCKER_MODEL_NOHISTORY="1", TERM="xterm",
    )  # fmt: skip


def test_plugin_is_listed_and_answers_version(docker_env: dict[str, str]) -> None:
    """The docker client lists the plugin and `docker model version` shows client and server."""
    listing = subprocess.run(
        [DOCKER, "--help"], env=docker_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert "Docker Model Runner" in listing.stdout
    out = ok(docker_model(docker_env, "version"))
    assert out.startswith("Client:\n Version:    ")
    assert "Server:\n Version:    0.1.0\n Engine:     Docker Engine (Manual Install)\n" in out


def test_status_json_says_running_with_llama_cpp(
    docker_env: dict[str, str], daemon: Daemon
) -> None:
    """`docker model status --json` reports a running daemon and its llama.cpp backend."""
    document = json.loads(ok(docker_model(docker_env, "status", "--json")))
    assert document["running"] is True
    assert document["backends"]["llama.cpp"].startswith("Running")
    # The host URL is the one the CLI uses; containers get the same port on the docker0
    # address or on model-runner.docker.internal (tests/functional/test_compose_models.py).
    assert document["endpointHost"] == daemon.base_url + "/engines/v1/"
    assert document["endpoint"].endswith(f":{daemon.port}/engines/v1/")
    assert "127.0.0.1" not in document["endpoint"]
    assert ok(docker_model(docker_env, "status")).startswith("Docker Model Runner is running\n")


def test_list_shows_the_seeded_model(docker_env: dict[str, str]) -> None:
    """`docker model ls` prints one row per tag with defaults stripped; -q and --json agree."""
    lines = ok(docker_model(docker_env, "ls")).splitlines()
    assert lines[0].split() == [
        "MODEL",
        "NAME",
        "PARAMETERS",
        "QUANTIZATION",
        "ARCHITECTURE",
        "MODEL",
        "ID",
        "CREATED",
        "CONTEXT",
        "SIZE",
    ]
    names = [line.split()[0] for line in lines[1:]]
    assert names == ["smollm2", "smollm2:135M-Q4_1"]
    models = json.loads(ok(docker_model(docker_env, "ls", "--json")))
    short_ids = ok(docker_model(docker_env, "ls", "-q")).split()
    assert short_ids == [model["id"][7:19] for model in models]
    assert lines[1].split()[4] == short_ids[0]


def test_package_smollm2_file_then_list(
    docker_env: dict[str, str], smollm2_gguf: Path, tmp_path: Path
) -> None:
    """`docker model package --gguf` loads the real SmolLM2 file into the daemon under a tag."""
    license_path = tmp_path / "LICENSE"
    license_path.write_text("Apache License 2.0\n")
    result = docker_model(
        docker_env,
        "package",
        "--gguf",
        str(smollm2_gguf),
        "--license",
        str(license_path),
        "--context-size",
        "2048",
        "test/smol:v1",
    )
    ok(result)
    assert "Model loaded successfully" in result.stderr
    row = next(line for line in ok(docker_model(docker_env, "ls", "test/smol:v1")).splitlines()[1:])
    assert row.split()[0] == "test/smol:v1"
    assert " 2048 " in row
    model = json.loads(ok(docker_model(docker_env, "inspect", "test/smol:v1")))
    assert model["config"]["context_size"] == 2048
    assert model["tags"] == ["docker.io/test/smol:v1"]


def test_run_prompt_gets_a_real_answer_then_ps_and_unload(docker_env: dict[str, str]) -> None:
    """`run MODEL PROMPT` streams the engine's answer; `ps` lists the runner; `unload` stops it."""
    # Keep answers short: the 135M model rambles for thousands of tokens otherwise.
    ok(docker_model(docker_env, "configure", "ai/smollm2", "--", "--n-predict", "24"))
    answer = ok(docker_model(docker_env, "run", "ai/smollm2", "Say hello."))
    assert answer.strip(), "the model answered nothing"
    piped = ok(
        docker_model(docker_env, "run", "ai/smollm2", stdin="What is the capital of France?\n")
    )
    assert piped.strip()
    lines = ok(docker_model(docker_env, "ps")).splitlines()
    assert lines[0].split() == ["MODEL", "NAME", "BACKEND", "MODE", "UNTIL"]
    # MODEL NAME is the reference the runner was loaded with (a tag of ai/smollm2).
    assert any(
        line.split()[0].startswith("smollm2") and line.split()[1:3] == ["llama.cpp", "completion"]
        for line in lines[1:]
    ), lines
    assert ok(docker_model(docker_env, "unload", "ai/smollm2")) == "Unloaded 1 model(s).\n"
    assert ok(docker_model(docker_env, "ps")).splitlines()[1:] == []
    assert ok(docker_model(docker_env, "stop", "--all")) == "No models are running.\n"


def test_run_detach_preloads_the_model(docker_env: dict[str, str]) -> None:
    """`run -d` loads the model without printing an answer."""
    assert ok(docker_model(docker_env, "run", "-d", "ai/smollm2")) == ""
    assert "smollm2" in ok(docker_model(docker_env, "ps"))
    ok(docker_model(docker_env, "unload", "--all"))


def test_tag_push_and_pull_through_a_loopback_registry(
    docker_env: dict[str, str], registry: RegistryServer
) -> None:
    """`tag` then `push` publish a local model; `pull` brings a pushed tag back."""
    target = f"{registry.host}/team/smol:v1"
    assert ok(docker_model(docker_env, "tag", "ai/smollm2", target)) == (
        f'Model "ai/smollm2" tagged successfully with "{target}"\n'
    )
    assert ok(docker_model(docker_env, "push", target)) == "Model pushed successfully\n"
    manifest = requests.get(
        f"{registry.url}/v2/team/smol/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert manifest.status_code == 200
    assert ok(docker_model(docker_env, "rm", target)) == f"Untagged: {target}\n"
    # The daemon still holds these blobs, so it may answer "Using cached model: <size>".
    pulled = ok(docker_model(docker_env, "pull", target))
    assert pulled.startswith(("Model pulled successfully", "Using cached model: ")), pulled
    assert target in ok(docker_model(docker_env, "ls", target))


def test_package_push_then_pull_and_rm(
    docker_env: dict[str, str], registry: RegistryServer, smollm2_gguf: Path
) -> None:
    """`package --push` goes straight to the registry; the daemon can then pull and remove it."""
    target = f"{registry.host}/team/packaged:v2"
    result = docker_model(docker_env, "package", "--gguf", str(smollm2_gguf), "--push", target)
    ok(result)
    assert "Model pushed successfully" in result.stderr
    assert ok(docker_model(docker_env, "ls", target)).splitlines()[1:] == []
    assert ok(docker_model(docker_env, "pull", target)) == "Model pulled successfully\n"
    model = json.loads(ok(docker_model(docker_env, "inspect", target)))
    removed = ok(docker_model(docker_env, "rm", target)).splitlines()
    assert removed == [f"Untagged: {target}", f"Deleted: {model['id']}"]


def test_df_shows_models_and_engine_sizes(docker_env: dict[str, str]) -> None:
    """`docker model df` prints the TYPE/SIZE table with decimal sizes."""
    lines = ok(docker_model(docker_env, "df")).splitlines()
    assert lines[0].split() == ["TYPE", "SIZE"]
    assert lines[1].startswith("Models") and lines[1].endswith("MB")
    assert lines[2].startswith("Inference engine")


def test_logs_show_the_daemon_log(docker_env: dict[str, str]) -> None:
    """`docker model logs` prints the daemon's bracket-timestamped log lines."""
    out = ok(docker_model(docker_env, "logs"))
    assert out.startswith("[")


def test_missing_model_is_one_error_line(docker_env: dict[str, str]) -> None:
    """An unknown model gives exit status 1 and the daemon's message on one stderr line."""
    result = docker_model(docker_env, "inspect", "ai/does-not-exist")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "ai/does-not-exist" in result.stderr
    assert "Traceback" not in result.stderr
    removed = docker_model(docker_env, "rm", "ai/does-not-exist")
    assert (removed.returncode, removed.stderr) == (
        1,
        "docker model: no such model: ai/does-not-exist\n",
    )


def test_bad_usage_exits_2(docker_env: dict[str, str]) -> None:
    """Missing arguments and unknown flags exit with status 2 and a usage line."""
    for args in (["pull"], ["ls", "--bogus"], ["unload"]):
        result = docker_model(docker_env, *args)
        assert result.returncode == 2, args
        assert "usage: docker model" in result.stderr


def test_daemon_down_gives_the_start_hint(docker_env: dict[str, str]) -> None:
    """With nothing listening, commands exit 1 and say how to start the daemon."""
    env = dict(docker_env, MODEL_RUNNER_HOST=f"127.0.0.1:{free_port()}")
    result = docker_model(env, "ls")
    assert result.returncode == 1
    assert "systemctl start docker-model-runner" in result.stderr
    assert result.stderr.count("\n") == 1
    status = docker_model(env, "status")
    assert status.returncode == 1 and "Docker Model Runner is not running" in status.stdout
    assert "(not reachable)" in ok(docker_model(env, "version"))


def test_unix_socket_host(docker_env: dict[str, str], daemon: Daemon) -> None:
    """MODEL_RUNNER_HOST=unix:///path reaches the daemon over its Unix socket."""
    env = dict(docker_env, MODEL_RUNNER_HOST=f"unix://{daemon.socket_path}")
    assert "smollm2" in ok(docker_model(env, "ls"))


def test_configure_show_and_bench(docker_env: dict[str, str]) -> None:
    """`configure show` lists the stored settings; `bench` prints a tokens/s row per level."""
    entries = json.loads(ok(docker_model(docker_env, "configure", "show", "ai/smollm2")))
    assert any("--n-predict" in entry["Config"].get("runtime-flags", []) for entry in entries)
    out = ok(
        docker_model(
            docker_env,
            "bench",
            "ai/smollm2",
            "--concurrency",
            "1,2",
            "--duration",
            "2s",
            "--max-tokens",
            "8",
            "--json",
        )
    )
    results = json.loads(out)["results"]
    assert [level["concurrency"] for level in results] == [1, 2]
    assert all(level["requests"] >= 1 and level["failed"] == 0 for level in results)
    assert all(level["tokens_per_second"] > 0 for level in results)
    ok(docker_model(docker_env, "unload", "--all"))


def test_interrupting_docker_stops_the_plugin(docker_env: dict[str, str]) -> None:
    """SIGINT to `docker` (no terminal) closes the plugin socket; `logs -f` then exits 130."""
    proc = subprocess.Popen(
        [DOCKER, "model", "logs", "-f"],
        env=docker_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"[")  # following the log
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        stop_process(proc)


class Terminal:
    """A command on a pseudo-terminal that is its controlling terminal (Ctrl-C is SIGINT)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        # setsid -c: a new session whose controlling terminal is the pty, like a real shell.
        self.proc = subprocess.Popen(
            ["setsid", "-c", *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
        )
        os.close(slave)
        self.pending = b""

    def expect(self, text: str, timeout: float = 120.0) -> str:
        """Read until ``text`` appears; return everything up to and including it."""
        wanted = text.encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} did not appear; got {self.pending[-800:]!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(
                        f"terminal closed before {text!r}; got {self.pending[-800:]!r}"
                    )
                self.pending += data
        end = self.pending.index(wanted) + len(wanted)
        seen, self.pending = self.pending[:end], self.pending[end:]
        return seen.decode("utf-8", "replace")

    def wait_for_output(self, timeout: float = 60.0) -> None:
        """Wait until at least one more byte arrives (bounded)."""
        if self.pending:
            return
        ready, _, _ = select.select([self.master], [], [], timeout)
        assert ready, "no output arrived"
        self.pending += os.read(self.master, 4096)

    def send(self, text: str) -> None:
        """Type ``text`` (include ``\\n`` to press Enter)."""
        os.write(self.master, text.encode())

    def close(self) -> None:
        """Stop the command and close the terminal."""
        stop_process(self.proc)
        os.close(self.master)


@pytest.fixture
def terminal(docker_env: dict[str, str]) -> Iterator[Terminal]:
    """Start `docker model run ai/smollm2` (interactive chat) on a pseudo-terminal."""
    if shutil.which("setsid") is None:
        pytest.skip("setsid (util-linux) is not installed")
    # Long answers must be possible so that Ctrl-C lands in the middle of one.
    ok(docker_model(docker_env, "configure", "ai/smollm2", "--", "--n-predict", "512"))
    session = Terminal([DOCKER, "model", "run", "ai/smollm2"], docker_env)
    try:
        yield session
    finally:
        session.close()


def test_interactive_chat_on_a_terminal(terminal: Terminal, docker_env: dict[str, str]) -> None:
    """Two turns, /set system, Ctrl-C mid-answer (the session survives) and /bye exit 0."""
    terminal.expect("> ")
    terminal.send("/set parameter num_predict 12\n")
    terminal.expect("Set parameter 'num_predict' to '12'")
    terminal.expect("> ")
    terminal.send("Hello there\n")
    first = terminal.expect("> ")
    assert first.replace("Hello there", "").strip(), "no answer to the first turn"
    terminal.send("/set system You are a pirate.\n")
    terminal.expect("Set system message.")
    terminal.expect("> ")
    terminal.send("What is your name?\n")
    second = terminal.expect("> ")
    assert second.replace("What is your name?", "").strip(), "no answer to the second turn"
    terminal.send("/set parameter num_predict 400\n")
    terminal.expect("> ")
    terminal.send("Tell me a very long story about ships.\n")
    terminal.expect("ships.\r\n")
    terminal.wait_for_output()  # the answer has started
    terminal.send("\x03")
    terminal.expect("> ", timeout=30)
    assert terminal.proc.poll() is None, "Ctrl-C ended the session instead of the answer"
    terminal.send("/bye\n")
    assert terminal.proc.wait(timeout=30) == 0
    ok(docker_model(docker_env, "unload", "--all"))


# --- run: images named in the prompt, --color ----------------------------------------------

# The smallest valid PNG: one transparent pixel.
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_run_sends_a_named_image_and_says_the_model_cannot_read_it(
    docker_env: dict[str, str], daemon: Daemon, tmp_path: Path
) -> None:
    """The image goes as an image_url part; SmolLM2 has no projector, so the daemon's 400 is
    shown as one clear line, and the request the daemon recorded carries the image, not the path."""
    picture = tmp_path / "pixel.png"
    picture.write_bytes(PIXEL_PNG)
    result = docker_model(docker_env, "run", "ai/smollm2", f"What is in {picture}?")
    assert result.returncode == 1, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "image" in message.lower() and ("projector" in message or "mmproj" in message), message
    records = ok(docker_model(docker_env, "requests", "--model", "ai/smollm2"))
    assert str(picture) not in records
    assert "data:image/png;base64," in records


def test_run_refuses_a_file_that_only_pretends_to_be_an_image(
    docker_env: dict[str, str], tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("just text\n")
    result = docker_model(docker_env, "run", "ai/smollm2", f"Read {fake}")
    assert result.returncode == 1
    assert "is not a JPEG, PNG or WebP image" in result.stderr


def test_run_color_yes_answers_and_color_no_writes_no_escape_codes(
    docker_env: dict[str, str],
) -> None:
    plain = ok(docker_model(docker_env, "run", "--color", "no", "ai/smollm2", "Say hello."))
    assert plain.strip() and not ANSI.search(plain)
    colored = ok(docker_model(docker_env, "run", "--color", "yes", "ai/smollm2", "Say hello."))
    assert ANSI.sub("", colored).strip()


# --- compose up|down|metadata: Compose's provider protocol -------------------------------------


def _provider_messages(stdout: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_compose_metadata_lists_the_up_parameters_as_dmr(docker_env: dict[str, str]) -> None:
    document = json.loads(ok(docker_model(docker_env, "compose", "metadata")))
    assert document["description"] == "Docker Model Runner"
    parameters = {p["name"]: p for p in document["up"]["parameters"]}
    assert parameters["model"]["required"] is True and parameters["model"]["type"] == "stringArray"
    assert parameters["context-size"]["default"] == "-1"
    assert {"runtime-flags", "speculative-draft-model", "backend"} <= set(parameters)
    assert document["down"] == {"parameters": None}


def test_compose_up_pulls_what_is_missing_configures_and_sets_url_and_model(
    docker_env: dict[str, str], registry: RegistryServer, smollm2_gguf: Path
) -> None:
    """As Compose runs it for a `provider: {type: model}` service: pull, _configure, setenv."""
    target = f"{registry.host}/team/compose:v1"
    ok(docker_model(docker_env, "package", "--gguf", str(smollm2_gguf), "--push", target))
    result = docker_model(
        docker_env, "compose", "--project-name", "demo", "up", "--model", target,
        "--context-size", "1024", "--runtime-flags", "--temp 0.2", "llm",
    )  # fmt: skip
    messages = _provider_messages(ok(result))
    assert all(m["type"] in ("info", "setenv") for m in messages), messages
    setenv = dict(m["message"].split("=", 1) for m in messages if m["type"] == "setenv")
    assert setenv["MODEL"] == target
    assert setenv["URL"].endswith("/engines/v1/") and "localhost" not in setenv["URL"]
    assert f"Successfully configured backend for model {target}" in [m["message"] for m in messages]
    assert target in ok(docker_model(docker_env, "ls", target))  # pulled
    entries = json.loads(ok(docker_model(docker_env, "configure", "show", target)))
    config = entries[0]["Config"]
    assert config.get("context-size") == 1024, entries
    assert config.get("runtime-flags") == ["--temp", "0.2"], entries
    assert ok(docker_model(docker_env, "compose", "down", "llm")) == ""
    ok(docker_model(docker_env, "rm", target))


def test_compose_up_without_a_model_reports_an_error_message(docker_env: dict[str, str]) -> None:
    result = docker_model(docker_env, "compose", "up", "llm")
    assert result.returncode == 1
    assert _provider_messages(result.stdout) == [{"type": "error", "message": "options.model is required"}]
