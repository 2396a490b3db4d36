"""How ``docker model`` prints things: tables, sizes, ages, progress (golden files in data/cli)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator import errors
from orchestrator.modelcli import formatting
from orchestrator.modelcli.daemon_client import (
    base_url_from_env,
    error_from_body,
    parse_progress_line,
)
from orchestrator.modelcli.progress_display import ProgressDisplay, format_eta, progress_bar

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "cli"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ID_A = "sha256:" + "a1" * 32
ID_B = "sha256:" + "b2" * 32
GGUF = {"general.architecture": "llama", "llama.context_length": "8192"}

MODELS = [
    {
        "id": ID_A,
        "tags": ["docker.io/ai/smollm2:latest", "docker.io/ai/smollm2:135M-Q4_1"],
        "created": int(NOW - 3 * 7 * 86400),
        "config": {
            "format": "gguf",
            "quantization": "Q4_1",
            "parameters": "134.52M",
            "architecture": "llama",
            "size": "93.80MiB",
            "gguf": GGUF,
            "context_size": 2048,
        },
    },
    {
        "id": ID_B,
        "tags": ["127.0.0.1:5000/team/model:v1"],
        "created": int(NOW - 7200),
        "config": {
            "format": "gguf",
            "quantization": "Q8_0",
            "parameters": "1.24B",
            "architecture": "llama",
            "size": "1.22GiB",
            "gguf": GGUF,
        },
    },
    {"id": "sha256:" + "c3" * 32, "created": 0, "config": {"format": "gguf"}},
]


def golden(name: str) -> str:
    return (GOLDEN / name).read_text(encoding="utf-8")


def test_render_table_pads_columns_with_two_spaces_and_no_trailing_blanks() -> None:
    text = formatting.render_table(("A", "LONGER"), [["xyz", "1"], ["x", "22"]], right_aligned=[1])
    assert text == "A    LONGER\nxyz       1\nx        22\n"


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0.00B"),
        (999, "999.00B"),
        (1000, "1.00kB"),
        (358_800_000, "358.80MB"),
        (98_362_432, "98.36MB"),
        (2_500_000_000_000, "2.50TB"),
    ],
)
def test_human_size_uses_decimal_units_with_two_decimals(size: int, expected: str) -> None:
    assert formatting.human_size(size) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.2, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (5400, "2 hours"),
        (47 * 3600, "47 hours"),
        (48 * 3600, "2 days"),
        (13 * 86400, "13 days"),
        (14 * 86400, "2 weeks"),
        (21 * 86400, "3 weeks"),
        (60 * 86400, "2 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration_matches_go_units(seconds: float, expected: str) -> None:
    assert formatting.human_duration(seconds) == expected


def test_relative_time() -> None:
    assert formatting.relative_time(int(NOW - 21 * 86400), NOW) == "3 weeks ago"
    assert formatting.relative_time(0, NOW) == ""


def test_list_table_matches_golden_file() -> None:
    assert formatting.list_table(MODELS, NOW) == golden("list.txt")


def test_list_rows_are_per_tag_sorted_and_strip_defaults() -> None:
    names = [row[0] for row in formatting.model_rows(MODELS, NOW)]
    assert names == ["127.0.0.1:5000/team/model:v1", "smollm2", "smollm2:135M-Q4_1", "<none>"]


def test_context_falls_back_to_gguf_context_length() -> None:
    assert formatting.context_size_of({"gguf": GGUF}) == "8192"
    assert formatting.context_size_of({"context_size": 4096, "gguf": GGUF}) == "4096"
    assert formatting.context_size_of({}) == ""


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("smollm2", [ID_A]),
        ("ai/smollm2:135M-Q4_1", [ID_A]),
        ("smollm2:nope", []),
        ("127.0.0.1:5000/team/model", [ID_B]),
        ("other", []),
    ],
)
def test_filter_models(query: str, expected: list[str]) -> None:
    assert [model["id"] for model in formatting.filter_models(MODELS, query)] == expected


def test_filter_models_rejects_invalid_reference() -> None:
    with pytest.raises(errors.InvalidReferenceError):
        formatting.filter_models(MODELS, "UPPER CASE")


def test_ps_table_matches_golden_file() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    entries = [
        {
            "backend_name": "llama.cpp",
            "model_name": "ai/smollm2",
            "mode": "completion",
            "last_used": "2026-01-01T11:58:00.123456789Z",
        },
        {
            "backend_name": "llama.cpp",
            "model_name": "docker.io/ai/smollm2:135M-Q4_1",
            "mode": "embedding",
            "last_used": "0001-01-01T00:00:00Z",
            "in_use": True,
            "keep_alive": "10m0s",
        },
        {
            "backend_name": "llama.cpp",
            "model_name": ID_B,
            "mode": "completion",
            "last_used": "0001-01-01T00:00:00Z",
            "loading": True,
        },
        {
            "backend_name": "llama.cpp",
            "model_name": "myorg/pinned",
            "mode": "completion",
            "last_used": "2026-01-01T11:00:00Z",
            "keep_alive": "-1",
        },
        {
            "backend_name": "llama.cpp",
            "model_name": "ai/old",
            "mode": "completion",
            "last_used": "2026-01-01T11:00:00Z",
            "keep_alive": "5m0s",
        },
    ]
    assert formatting.ps_table(entries, now) == golden("ps.txt")


def test_df_table_matches_golden_file() -> None:
    usage = {"models_disk_usage": 358_800_000, "default_backend_disk_usage": 15_632_144}
    assert formatting.df_table(usage) == golden("df.txt")


def test_status_table_sorts_running_first() -> None:
    backends = {
        "vllm": "Not Installed: only on Linux with NVIDIA GPUs",
        "mlx": "Not Installed",
        "llama.cpp": "Running: llama.cpp b1234 (abc1234)",
        "sglang": "Error: Python not found",
    }
    assert formatting.status_table(backends) == golden("status.txt")


def test_show_text_matches_golden_file() -> None:
    assert formatting.show_text(MODELS[0]) == golden("show.txt")


def test_format_json_indents_four_spaces_and_keeps_unicode() -> None:
    assert formatting.format_json({"a": "é<>"}) == '{\n    "a": "é<>"\n}\n'


def test_short_id() -> None:
    assert formatting.short_id(ID_A) == "a1" * 6
    assert formatting.short_id("abc") == "abc"


# --- progress -------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def event(layer: str, size: int, current: int) -> dict[str, object]:
    return {
        "type": "progress",
        "total": size,
        "layer": {"id": layer, "size": size, "current": current},
    }


def test_progress_bar_and_eta() -> None:
    assert progress_bar(0, 100, width=10) == "[>         ]"
    assert progress_bar(50, 100, width=10) == "[=====>    ]"
    assert progress_bar(100, 100, width=10) == "[==========]"
    assert format_eta(4.4) == "4s"
    assert format_eta(125) == "2m05s"
    assert format_eta(3720) == "1h02m"


def test_plain_progress_prints_quarter_steps_and_completion() -> None:
    out, clock = io.StringIO(), FakeClock()
    display = ProgressDisplay(out, is_tty=False, mode="pull", clock=clock)
    layer = "sha256:" + "d4" * 32
    for current in range(0, 100_000_001, 5_000_000):
        clock.now += 0.5
        display.handle(event(layer, 100_000_000, current))
    display.finish()
    assert out.getvalue() == golden("progress-plain.txt")


def test_tty_progress_redraws_one_line_per_layer_with_speed_and_eta() -> None:
    out, clock = io.StringIO(), FakeClock()
    display = ProgressDisplay(out, is_tty=True, mode="pull", clock=clock)
    first, second = "sha256:" + "e5" * 32, "sha256:" + "f6" * 32
    display.handle(event(first, 10_000_000, 0))
    display.handle(event(second, 2_000, 2_000))
    clock.now += 2
    display.handle(event(first, 10_000_000, 4_000_000))
    assert display.layer_line(first) == (
        "e5e5e5e5e5e5: [============>                 ]  4.0MB/10.0MB  2.0MB/s  ETA 3s"
    )
    assert display.layer_line(second) == "f6f6f6f6f6f6: Pull complete"
    # Each redraw first moves the cursor up over the bars drawn before (1, then 2 lines).
    assert out.getvalue().count("\x1b[1F") == 1
    assert out.getvalue().count("\x1b[2F") == 1


def test_warning_events_are_printed() -> None:
    out = io.StringIO()
    ProgressDisplay(out, is_tty=False).handle({"type": "warning", "message": "slow registry"})
    assert out.getvalue() == "Warning: slow registry\n"


# --- client-side decoding -------------------------------------------------------------------


def test_progress_lines_are_html_unescaped_when_needed() -> None:
    line = (
        "{&#34;type&#34;:&#34;success&#34;,&#34;message&#34;:&#34;Model pulled successfully&#34;}"
    )
    assert parse_progress_line(line) == {"type": "success", "message": "Model pulled successfully"}
    assert parse_progress_line('{"type":"progress"}') == {"type": "progress"}
    assert parse_progress_line("   ") is None
    assert parse_progress_line("boom &amp; more") == {"type": "text", "message": "boom & more"}


def test_error_from_body_rebuilds_the_daemon_error_class() -> None:
    body = (
        '{"error": {"message": "model \'ai/nope:latest\' is not in the local store", '
        '"type": "invalid_request_error", "param": "model", "code": "model_not_found"}}'
    )
    error = error_from_body(404, body)
    assert isinstance(error, errors.ModelNotFoundError)
    assert error.message == "model 'ai/nope:latest' is not in the local store"
    assert error.param == "model"


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (
            409,
            "unable to delete: resource conflict\n",
            errors.ConflictError,
            "unable to delete: resource conflict",
        ),
        (
            400,
            '{"error": {"code": 400, "message": "context too long", "type": "exceed_context"}}',
            errors.InvalidRequestError,
            "context too long",
        ),
        (
            500,
            '{"error": "Failed to pull model"}',
            errors.OrchestratorError,
            "Failed to pull model",
        ),
        (
            418,
            "",
            errors.OrchestratorError,
            "the daemon answered HTTP 418 without an explanation; see 'docker model logs'",
        ),
        # A code whose status disagrees with the answer falls back to the status.
        (
            503,
            '{"error": {"message": "busy", "code": "model_not_found"}}',
            errors.ServiceUnavailableError,
            "busy",
        ),
    ],
)
def test_error_from_body_other_shapes(status: int, body: str, cls: type, message: str) -> None:
    error = error_from_body(status, body)
    assert type(error) is cls
    assert error.message == message
    assert error.details["status"] == status


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "http://localhost:12434"),
        ("127.0.0.1:9999", "http://127.0.0.1:9999"),
        ("https://models.example.com/", "https://models.example.com"),
        ("unix:///run/dmr.sock", "unix:///run/dmr.sock"),
        ("/run/dmr.sock", "unix:///run/dmr.sock"),
    ],
)
def test_base_url_from_env(value: str, expected: str) -> None:
    assert base_url_from_env({"MODEL_RUNNER_HOST": value}) == expected
