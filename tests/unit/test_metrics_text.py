"""Prometheus text: label injection, family merging, the daemon's own request counters."""

from __future__ import annotations

from orchestrator.api.metrics import (
    Family,
    add_labels,
    merge_runner_metrics,
    render_families,
)
from orchestrator.api.request_stats import RequestStats, format_labels, format_value

RUNNER_TEXT = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 31
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing{slot="0"} 1
"""

LABELS_A = 'backend="llama.cpp",model="a",mode="completion"'
LABELS_B = 'backend="llama.cpp",model="b",mode="embedding"'


def test_add_labels_to_bare_and_labelled_samples() -> None:
    assert add_labels("x 1", 'a="b"') == 'x{a="b"} 1'
    assert add_labels('x{s="0"} 1', 'a="b"') == 'x{a="b",s="0"} 1'
    assert add_labels("x{} 1", 'a="b"') == 'x{a="b"} 1'
    assert add_labels("x 1 1700000000", 'a="b"') == 'x{a="b"} 1 1700000000'


def test_families_from_two_runners_are_merged_under_one_header() -> None:
    families: dict[str, Family] = {}
    merge_runner_metrics([(LABELS_A, RUNNER_TEXT), (LABELS_B, RUNNER_TEXT)], families)
    text = render_families(families.values())
    assert text.count("# TYPE llamacpp:prompt_tokens_total counter") == 1
    assert text.count("# HELP llamacpp:requests_processing ") == 1
    assert f"llamacpp:prompt_tokens_total{{{LABELS_A}}} 31" in text
    assert f"llamacpp:prompt_tokens_total{{{LABELS_B}}} 31" in text
    assert f'llamacpp:requests_processing{{{LABELS_B},slot="0"}} 1' in text
    lines = text.splitlines()
    # Each family's samples follow its own header.
    head = lines.index("# TYPE llamacpp:requests_processing gauge")
    assert all(line.startswith("llamacpp:requests_processing{") for line in lines[head + 1 :])


def test_histogram_samples_stay_in_their_family() -> None:
    text = '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 3\nh_sum 4.5\nh_count 3\n'
    families: dict[str, Family] = {}
    merge_runner_metrics([(LABELS_A, text)], families)
    assert list(families) == ["h"]
    assert len(families["h"].samples) == 4


def test_label_values_are_escaped() -> None:
    assert format_labels([("model", 'a"b\\c\nd')]) == '{model="a\\"b\\\\c\\nd"}'
    assert format_value(float("inf")) == "+Inf"
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"


def test_request_stats_render() -> None:
    stats = RequestStats()
    timer = stats.begin("smollm2", "completion")
    assert stats.in_flight("smollm2", "completion") == 1
    timer.first_byte()
    timer.status = 200
    timer.finish()
    timer.finish()
    text = stats.render()
    assert stats.in_flight("smollm2", "completion") == 0
    assert 'dmr_requests_total{model="smollm2",mode="completion",status="200"} 1' in text
    assert 'dmr_request_duration_seconds_count{model="smollm2",mode="completion"} 1' in text
    assert (
        'dmr_request_time_to_first_byte_seconds_bucket{model="smollm2",mode="completion",le="+Inf"} 1'
        in text
    )
    assert 'dmr_requests_in_flight{model="smollm2",mode="completion"} 0' in text
