"""Settings: converters, precedence and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import SETTINGS, Config, format_duration, load, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("0", 0.0),
        ("-1", -1.0),
        ("-5m", -1.0),
        ("42", 42.0),
        ("1h0m0s", 3600.0),
    ],
)
def test_parse_duration_accepts_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m3", "five", "1h-2m", "--1", "nan", "inf", "-inf", "1e400", "Infinity"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(300.0, "5m0s"), (3600.0, "1h0m0s"), (45.0, "45s"), (-1.0, "-1"), (0.0, "0s")]
)
def test_format_duration_matches_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_defaults_when_no_source_sets_anything(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    config = load(environ={}, config_file=str(empty))
    assert config == Config()
    assert config.port == 12434
    assert config.keep_alive == 300.0


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("port: 2000\nkeep_alive: 10m\norigins: [http://a.example]\n")
    from_file = load(config_file=str(config_file), environ={})
    assert (from_file.port, from_file.keep_alive, from_file.origins) == (2000, 600.0, ("http://a.example",))

    from_env = load(config_file=str(config_file), environ={"DMR_RUNNER_PORT": "3000", "DMR_ORIGINS": "*"})
    assert (from_env.port, from_env.origins) == (3000, ("*",))

    from_flag = load(config_file=str(config_file), environ={"DMR_RUNNER_PORT": "3000"}, overrides={"port": "4000"})
    assert from_flag.port == 4000


def test_env_values_are_trimmed_and_unquoted() -> None:
    config = load(config_file=None, environ={"DMR_KEEP_ALIVE": ' "-1" ', "DMR_CONFIG": ""})
    assert config.keep_alive == -1.0


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"DMR_RUNNER_PORT": "http"}, "DMR_RUNNER_PORT"),
        ({"DMR_RUNNER_PORT": "70000"}, "port"),
        ({"DMR_KEEP_ALIVE": "soon"}, "keep_alive"),
        ({"DISABLE_METRICS": "maybe"}, "DISABLE_METRICS"),
    ],
)
def test_bad_env_values_name_the_variable(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(config_file=None, environ=environ)
    assert fragment in caught.value.message


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("prot: 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load(config_file=str(config_file), environ={})


def test_missing_or_invalid_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(config_file=str(tmp_path / "absent.yaml"), environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("[1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(config_file=str(bad), environ={})
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(config_file=str(listing), environ={})


def test_every_setting_is_a_config_field() -> None:
    fields = set(Config.__dataclass_fields__)
    assert {setting.name for setting in SETTINGS} == fields
    for setting in SETTINGS:
        assert getattr(Config(), setting.name) == setting.default


def test_an_unreadable_default_file_is_skipped_but_a_named_one_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The packaged config.yaml is 0640 root:docker-model-runner (it may hold the API key): a
    # user outside the group still gets a working CLI. (Tests run as root, who reads any mode,
    # so the refusal is simulated.)
    from orchestrator import settings

    default = tmp_path / "config.yaml"
    default.write_text("port: 1\n")
    monkeypatch.setattr(settings, "DEFAULT_CONFIG_FILE", str(default))
    real_read = Path.read_text

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        if self == default:
            raise PermissionError(13, "Permission denied")
        return real_read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", refuse)
    assert load(environ={}).port == 12434
    with pytest.raises(ConfigError, match="Permission denied"):
        load(config_file=str(default), environ={})
