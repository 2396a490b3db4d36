"""``docker model`` argument handling: plugin protocol, usage errors, request bodies, files."""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.modelcli import main as cli
from orchestrator.modelcli.commands import bench, package, plugin, runtime
from orchestrator.modelcli.commands.run import include_files, iter_chat_deltas
from orchestrator.modelcli.context import CliContext
from orchestrator.store.builder import Artifact, LayerFile

# Any HTTP attempt would fail with exit status 1, so exit 2 proves nothing was sent.
NOWHERE = {"MODEL_RUNNER_HOST": "unix:///nonexistent/dmr.sock"}


def run_cli(argv: list[str], environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    ctx = CliContext(
        stdout=io.StringIO(),
        stderr=io.StringIO(),
        stdin=io.StringIO(""),
        environ=dict(NOWHERE if environ is None else environ),
    )
    status = cli.main(argv, ctx)
    return status, ctx.stdout.getvalue(), ctx.stderr.getvalue()  # type: ignore[attr-defined]


def parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def test_metadata_answers_the_docker_plugin_protocol() -> None:
    status, out, _ = run_cli(["docker-cli-plugin-metadata"])
    assert status == 0
    document = json.loads(out)
    assert document["SchemaVersion"] == "0.1.0"
    assert document["ShortDescription"] == "Docker Model Runner"
    assert document["Vendor"] and document["Version"]


def test_plugin_name_is_stripped() -> None:
    assert cli.split_plugin_argv(["model", "version"]) == (["version"], True)
    assert cli.split_plugin_argv(["version"]) == (["version"], False)
    assert cli.split_plugin_argv([]) == ([], False)


def test_version_works_without_a_daemon_in_both_modes() -> None:
    for prefix, prog in ((["model"], "docker model"), ([], "docker-model")):
        status, out, err = run_cli([*prefix, "version"])
        assert status == 0, err
        assert out.startswith("Client:\n Version:    ")
        assert " Version:    (not reachable)\n" in out
        # Messages name the program the way the user called it.
        assert run_cli([*prefix, "ls"])[2].startswith(f"{prog}: cannot connect")


def test_no_command_prints_help() -> None:
    status, out, _ = run_cli([])
    assert status == 0
    assert "Commands:" in out and "install-plugin" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus"],
        ["pull"],
        ["tag", "only-one"],
        ["rm"],
        ["list", "--json", "--nope"],
        ["list", "--openai", "-q"],
        ["inspect", "--openai", "--remote", "m"],
        ["unload"],
        ["unload", "--all", "m"],
        ["run"],
        ["run", "--color", "pink", "m"],
        ["configure", "m", "--think=maybe"],
        ["configure", "m", "--keep-alive", "soon"],
        ["configure", "m", "--pin", "--keep-alive", "5m"],
        ["configure", "m", "--context-size", "0"],
        ["configure", "m", "--mode", "chat"],
        ["configure", "show", "a", "b"],
        ["package", "m"],
        ["package", "--gguf", "/x.gguf", "--from", "y", "m"],
        ["package", "--gguf", "/x.gguf", "--context-size", "-5", "m"],
        ["bench", "m", "--concurrency", "0"],
        ["bench", "m", "--duration", "never"],
    ],
)
def test_bad_usage_exits_2_without_calling_the_daemon(argv: list[str]) -> None:
    status, _, _ = run_cli(argv)
    assert status == 2


def test_daemon_down_is_one_line_with_a_start_hint() -> None:
    status, out, err = run_cli(["ls"])
    assert status == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "cannot connect to Docker Model Runner at unix:///nonexistent/dmr.sock" in err
    assert "systemctl start docker-model-runner" in err and "model-runner" in err


def test_status_reports_not_running() -> None:
    status, out, _ = run_cli(["status"])
    assert status == 1
    assert out.startswith("Docker Model Runner is not running\n")
    status, out, _ = run_cli(["status", "--json"])
    assert status == 1
    document = json.loads(out)
    assert document["running"] is False and document["backends"] == {}
    assert document["kind"] == "Docker Engine (Manual Install)"


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in subparsers.choices:
        status, _, _ = run_cli([name, "--help"])
        assert status == 0, name
        assert "usage:" in capsys.readouterr().out


def test_list_flags() -> None:
    args = parse(["ls", "-q", "smollm2"])
    assert (args.command, args.quiet, args.model, args.json) == ("ls", True, "smollm2", False)


def test_run_collects_prompt_words() -> None:
    args = parse(["run", "-d", "--color", "yes", "ai/smollm2", "Say", "hi"])
    assert args.model == "ai/smollm2" and args.prompt == ["Say", "hi"] and args.detach


def configure_body(argv: list[str]) -> dict[str, object]:
    return runtime.build_configure_request(parse(["configure", *argv]))


def test_configure_request_body_uses_dmr_key_spelling() -> None:
    body = configure_body(
        [
            "--context-size",
            "8192",
            "--keep-alive",
            "10m",
            "--mode",
            "embedding",
            "--think",
            "--speculative-draft-model",
            "ai/small",
            "--speculative-num-tokens",
            "8",
            "ai/smollm2",
            "--",
            "--temp",
            "0.7",
            "--top-k",
            "40",
        ]
    )
    assert body == {
        "model": "ai/smollm2",
        "mode": "embedding",
        "context-size": 8192,
        "keep_alive": "10m",
        "runtime-flags": ["--temp", "0.7", "--top-k", "40"],
        "speculative": {"draft_model": "ai/small", "num_tokens": 8},
        "llamacpp": {"reasoning-budget": -1},
    }


def test_configure_pin_and_think_false_and_negative_values() -> None:
    body = configure_body(["--pin", "--think=false", "--context-size", "-1", "m"])
    assert body == {
        "model": "m",
        "context-size": -1,
        "keep_alive": "-1",
        "llamacpp": {"reasoning-budget": 0},
    }
    assert configure_body(["--keep-alive", "-1", "m"])["keep_alive"] == "-1"
    assert configure_body(["--hf_overrides", '{"a": 1}', "--gpu-memory-utilization", "0.5", "m"])[
        "vllm"
    ] == {
        "hf-overrides": {"a": 1},
        "gpu-memory-utilization": 0.5,
    }


def test_bench_concurrency_list() -> None:
    args = parse(["bench", "m", "--concurrency", "1,4", "--duration", "2s"])
    assert args.concurrency == [1, 4] and args.duration == 2.0
    assert parse(["bench", "m"]).concurrency == list(bench.DEFAULT_CONCURRENCY)


# --- package: the tar body ------------------------------------------------------------------


def small_artifact(tmp_path: Path) -> Artifact:
    import hashlib

    layers = []
    for name, data in (("model.gguf", b"GGUF" + b"x" * 1500), ("LICENSE", b"MIT\n")):
        path = tmp_path / name
        path.write_bytes(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        layers.append(LayerFile(path, "application/octet-stream", digest, len(data), {}))
    config = b'{"config":{"format":"gguf"}}'
    manifest = json.dumps(
        {"schemaVersion": 2, "layers": [layer.digest for layer in layers]}
    ).encode()
    return Artifact(manifest_bytes=manifest, config_bytes=config, layers=tuple(layers))


def test_tar_body_has_the_dmr_layout_and_an_exact_length(tmp_path: Path) -> None:
    artifact = small_artifact(tmp_path)
    events: list[dict[str, object]] = []
    body = package.TarBody(artifact, events.append)
    data = b"".join(body)
    assert len(data) == len(body)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        members = [
            (
                member.name,
                member.isdir(),
                archive.extractfile(member).read() if member.isfile() else None,
            )
            for member in archive
        ]
    config_hex = artifact.config_digest.split(":")[1]
    assert [name for name, _, _ in members] == [
        "blobs",
        "blobs/sha256",
        *(f"blobs/sha256/{layer.digest.split(':')[1]}" for layer in artifact.layers),
        f"blobs/sha256/{config_hex}",
        "manifest.json",
    ]
    assert members[2][2] == Path(artifact.layers[0].path).read_bytes()
    assert members[-1][2] == artifact.manifest_bytes
    assert events[-1]["layer"] == {"id": artifact.layers[1].digest, "size": 4, "current": 4}


def test_tar_body_notices_a_file_that_shrank(tmp_path: Path) -> None:
    from orchestrator.errors import InvalidModelFileError

    artifact = small_artifact(tmp_path)
    Path(artifact.layers[0].path).write_bytes(b"GGUF")
    with pytest.raises(InvalidModelFileError, match="changed while it was being packaged"):
        b"".join(package.TarBody(artifact))


# --- plugin installation --------------------------------------------------------------------


def test_install_plugin_writes_an_executable_launcher(tmp_path: Path) -> None:
    status, out, err = run_cli(["install-plugin"], {"DOCKER_CONFIG": str(tmp_path / "cfg")})
    assert status == 0, err
    launcher = tmp_path / "cfg" / "cli-plugins" / "docker-model"
    assert launcher.is_file() and os.access(launcher, os.X_OK)
    assert "from orchestrator.modelcli.main import main" in launcher.read_text()
    assert str(launcher) in out


def test_install_plugin_into_an_unwritable_place_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    status, _, err = run_cli(["install-plugin", "--dir", str(blocker / "sub")])
    assert status == 2
    assert "cannot write the plugin" in err


def test_plugin_dir_defaults() -> None:
    assert plugin.plugin_dir({"DOCKER_CONFIG": "/cfg"}) == Path("/cfg/cli-plugins")
    assert plugin.plugin_dir({}) == Path.home() / ".docker" / "cli-plugins"


# --- run helpers ------------------------------------------------------------------------------


def test_include_files_replaces_existing_paths_only(tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("file body")
    spaced = tmp_path / "a b.txt"
    spaced.write_text("spaced body")
    text = include_files(f'read @{note} and @"{spaced}" not @missing.txt or a@b.c')
    assert text == "read file body and spaced body not @missing.txt or a@b.c"


def sse(*payloads: str) -> Iterator[str]:
    for payload in payloads:
        yield f"data: {payload}"
        yield ""


def test_iter_chat_deltas_reads_content_and_reasoning() -> None:
    lines = sse(
        '{"choices":[{"delta":{"role":"assistant"}}]}',
        '{"choices":[{"delta":{"reasoning_content":"hmm"}}]}',
        '{"choices":[{"delta":{"content":"Hel"}}]}',
        '{"choices":[{"delta":{"content":"lo"}}]}',
        "[DONE]",
        '{"choices":[{"delta":{"content":"after done"}}]}',
    )
    assert list(iter_chat_deltas(lines)) == [
        ("reasoning", "hmm"),
        ("content", "Hel"),
        ("content", "lo"),
    ]


def test_iter_chat_deltas_raises_stream_errors() -> None:
    from orchestrator.errors import OrchestratorError

    lines = sse(
        '{"choices":[{"delta":{"content":"a"}}]}',
        '{"error":{"message":"runner crashed","code":"runner_crashed"}}',
    )
    deltas = iter_chat_deltas(lines)
    assert next(deltas) == ("content", "a")
    with pytest.raises(OrchestratorError, match="runner crashed"):
        next(deltas)
