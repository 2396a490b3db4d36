"""DMR's environment variables: names, precedence against ours, and what each one changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator import server
from orchestrator.errors import ConfigError
from orchestrator.registry.pull import pull_sources
from orchestrator.runners.llamacpp import build_argv
from orchestrator.settings import Config, load
from orchestrator.store.reference import parse_reference, set_default_registry


def settings(**environ: str) -> Config:
    return load(config_file="/dev/null", environ=environ)


@pytest.fixture
def default_registry() -> Iterator[None]:
    previous = set_default_registry("docker.io")
    yield
    set_default_registry(previous)


def test_model_runner_port_is_read_when_ours_is_unset() -> None:
    assert settings(MODEL_RUNNER_PORT="5555").port == 5555


def test_our_port_wins_over_model_runner_port() -> None:
    assert settings(MODEL_RUNNER_PORT="5555", DMR_RUNNER_PORT="6666").port == 6666


def test_an_empty_model_runner_port_is_unset_as_in_dmr() -> None:
    assert settings(MODEL_RUNNER_PORT="").port == 12434
    assert settings(MODEL_RUNNER_PORT="  ").port == 12434


def test_a_bad_model_runner_port_names_that_variable() -> None:
    with pytest.raises(ConfigError, match="MODEL_RUNNER_PORT"):
        settings(MODEL_RUNNER_PORT="http")


def test_the_command_line_wins_over_both_port_variables() -> None:
    config = load(
        config_file="/dev/null",
        environ={"MODEL_RUNNER_PORT": "5555", "DMR_RUNNER_PORT": "6666"},
        overrides={"port": "7777"},
    )
    assert config.port == 7777


def test_llama_args_are_split_with_quotes_and_allow_listed() -> None:
    config = settings(LLAMA_ARGS="--threads 4 --chat-template-kwargs '{\"a\": 1}' --temp 0.5")
    assert config.llama_args == ("--threads", "4", "--chat-template-kwargs", '{"a": 1}', "--temp", "0.5")


@pytest.mark.parametrize(
    "value",
    ["--model x.gguf", "--host 0.0.0.0", "--log-file /tmp/x", "--threads", "--temp 'unclosed"],
)
def test_llama_args_outside_the_allow_list_stop_the_daemon(value: str) -> None:
    with pytest.raises(ConfigError, match="LLAMA_ARGS"):
        settings(LLAMA_ARGS=value)


def test_llama_args_come_after_the_daemon_flags_and_before_the_models(tmp_path: Path) -> None:
    bundle = SimpleNamespace(
        gguf_path=tmp_path / "m.gguf", mmproj_path=None, chat_template_path=None, config={}
    )
    model_flags = SimpleNamespace(runtime_flags=("--temp", "0.9"), reasoning_budget=None,
                                  context_size=None)  # fmt: skip
    argv = build_argv(
        engine_path="llama-server",
        bundle=bundle,  # type: ignore[arg-type]
        mode="completion",
        socket_path="/run/x.sock",
        settings=model_flags,  # type: ignore[arg-type]
        engine_args=("--temp", "0.5", "--threads", "2"),
    )
    assert argv.index("--threads") > argv.index("--host")
    temps = [argv[i + 1] for i, item in enumerate(argv) if item == "--temp"]
    assert temps == ["0.5", "0.9"]  # llama-server takes the last: the model's own flag wins


def test_default_registry_names_the_registry_of_short_references(default_registry: None) -> None:
    config = settings(DEFAULT_REGISTRY="Registry.Example.com:5000")
    assert config.default_registry == "registry.example.com:5000"
    set_default_registry(config.default_registry)
    ref = parse_reference("ai/smollm2")
    assert ref.tag_string == "registry.example.com:5000/ai/smollm2:latest"
    assert parse_reference("smollm2").repository == "ai/smollm2"
    assert parse_reference("docker.io/ai/smollm2").registry == "docker.io"


@pytest.mark.parametrize("value", ["not a host", "https://x/y", "justaname"])
def test_a_bad_default_registry_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="DEFAULT_REGISTRY"):
        settings(DEFAULT_REGISTRY=value)


def test_docker_hub_names_are_one_default_registry() -> None:
    assert settings(DEFAULT_REGISTRY="index.docker.io").default_registry == "docker.io"
    assert settings().default_registry == "docker.io"


def test_insecure_registry_makes_only_the_default_registry_plain_http() -> None:
    config = settings(DEFAULT_REGISTRY="registry.lan:5000", INSECURE_REGISTRY="true",
                      DMR_INSECURE_REGISTRIES="other.lan")  # fmt: skip
    assert config.plain_http_registries == ("other.lan", "registry.lan:5000")
    assert settings(DEFAULT_REGISTRY="registry.lan:5000").plain_http_registries == ()


def test_insecure_registry_without_default_registry_only_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert settings(INSECURE_REGISTRY="true").plain_http_registries == ()
    assert "INSECURE_REGISTRY=true applies only to DEFAULT_REGISTRY" in caplog.text


def test_mirrors_are_parsed_in_order() -> None:
    config = settings(
        MODEL_RUNNER_REGISTRY_MIRRORS="https://mirror.example.com, 127.0.0.1:5001,http://localhost:5002/"
    )
    assert config.registry_mirrors == (
        "https://mirror.example.com",
        "127.0.0.1:5001",
        "http://localhost:5002",
    )


@pytest.mark.parametrize(
    "value", ["ftp://mirror", "https://mirror/artifactory/api/docker/x", "https://"]
)
def test_unusable_mirrors_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="MODEL_RUNNER_REGISTRY_MIRRORS"):
        settings(MODEL_RUNNER_REGISTRY_MIRRORS=value)


def test_a_plain_http_mirror_must_be_an_insecure_registry() -> None:
    with pytest.raises(ConfigError, match="DMR_INSECURE_REGISTRIES"):
        settings(MODEL_RUNNER_REGISTRY_MIRRORS="http://mirror.lan")
    allowed = settings(
        MODEL_RUNNER_REGISTRY_MIRRORS="http://mirror.lan", DMR_INSECURE_REGISTRIES="mirror.lan"
    )
    assert allowed.registry_mirrors == ("http://mirror.lan",)


def test_mirrors_serve_the_default_registry_first_then_the_origin(
    default_registry: None,
) -> None:
    config = settings(MODEL_RUNNER_REGISTRY_MIRRORS="m1.example.com,127.0.0.1:5001")
    sources = pull_sources(parse_reference("ai/smollm2:tiny"), config)
    assert [source.registry for source in sources] == ["m1.example.com", "127.0.0.1:5001", "docker.io"]
    assert {(s.repository, s.tag) for s in sources} == {("ai/smollm2", "tiny")}
    other = parse_reference("registry.example.com/team/model")
    assert pull_sources(other, config) == [other]


def test_tls_enabled_follows_dmr() -> None:
    pem = {"MODEL_RUNNER_TLS_CERT": "/c.pem", "MODEL_RUNNER_TLS_KEY": "/k.pem"}
    assert server.tls_enabled(settings(**pem)) is True  # ours: both files are enough
    assert server.tls_enabled(settings(**pem, MODEL_RUNNER_TLS_ENABLED="false")) is False
    assert server.tls_enabled(settings(**pem, MODEL_RUNNER_TLS_ENABLED="true")) is True
    with pytest.raises(ConfigError, match="does not generate certificates"):
        settings(MODEL_RUNNER_TLS_ENABLED="true")
