"""Prometheus text: the daemon's own metrics, runners' families merged, label escaping."""

from __future__ import annotations

import prometheus_client
import pytest

from orchestrator.api.metrics import (
    merge_runner_metrics,
    parse_runner_metrics,
    render_families,
)
from orchestrator.api.request_stats import RequestStats
from orchestrator.runners.stats import RunnerStats
from tests.support.metrics_text import exposition, sample_value

# What llama-server writes (tools/server/server-task.cpp, to_metrics): HELP, TYPE, one sample.
# n_tokens_max is declared a counter without the _total suffix.
RUNNER_TEXT = """# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 31
# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 42
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing{slot="0"} 1
"""

LABELS_A = {"backend": "llama.cpp", "model": "a", "mode": "completion"}
LABELS_B = {"backend": "llama.cpp", "model": "b", "mode": "embedding"}
ODD = 'a"b\\c\nd'
"""A model name with every character the text format escapes: quote, backslash, newline."""
ODD_ESCAPED = 'a\\"b\\\\c\\nd'

# The daemon's families, in order, exactly as /metrics gave them before prometheus_client.
DAEMON_HEADERS = """\
# HELP dmr_requests_in_flight Inference requests being served, per model and mode.
# TYPE dmr_requests_in_flight gauge
# HELP dmr_requests_total Finished inference requests, per model, mode and HTTP status.
# TYPE dmr_requests_total counter
# HELP dmr_api_requests_total Finished inference requests, per API face (openai, ollama, anthropic, responses), model and HTTP status.
# TYPE dmr_api_requests_total counter
# HELP dmr_request_duration_seconds Inference request duration including runner start, per model and mode.
# TYPE dmr_request_duration_seconds histogram
# HELP dmr_request_time_to_first_byte_seconds Time from request arrival to the first body byte from the engine.
# TYPE dmr_request_time_to_first_byte_seconds histogram
# HELP dmr_runner_starts_total Runner processes spawned.
# TYPE dmr_runner_starts_total counter
# HELP dmr_runner_start_failures_total Runner starts that failed, by reason.
# TYPE dmr_runner_start_failures_total counter
# HELP dmr_runner_load_seconds Time from spawn to a healthy runner.
# TYPE dmr_runner_load_seconds histogram
# HELP dmr_runner_stops_total Runners stopped or gone, by reason.
# TYPE dmr_runner_stops_total counter
# HELP dmr_runner_evictions_total Idle runners stopped, by reason.
# TYPE dmr_runner_evictions_total counter
# HELP dmr_admissions_refused_total Requests refused before a runner started, by reason.
# TYPE dmr_admissions_refused_total counter
# HELP dmr_queue_depth Requests waiting for memory, a runner slot or a loading runner, by model.
# TYPE dmr_queue_depth gauge
# HELP dmr_queue_wait_seconds Time requests waited before they were served a runner or refused, by model.
# TYPE dmr_queue_wait_seconds summary
# HELP dmr_runner_memory_estimate_bytes RAM the estimate predicted for a loaded runner.
# TYPE dmr_runner_memory_estimate_bytes gauge
# HELP dmr_runner_memory_measured_bytes Largest RSS measured for a loaded runner.
# TYPE dmr_runner_memory_measured_bytes gauge
# HELP dmr_runner_memory_estimate_error_ratio (estimate - measured) / measured RAM of a loaded runner; positive when the estimate is larger.
# TYPE dmr_runner_memory_estimate_error_ratio gauge
"""


def merged_text(*scrapes: tuple[dict[str, str], str]) -> str:
    """Return the /metrics text of runners that answered ``(labels, text)``."""
    parsed = [(labels, parse_runner_metrics(text)) for labels, text in scrapes]
    return render_families(merge_runner_metrics(parsed)).decode()


def test_families_from_two_runners_are_merged_under_one_header() -> None:
    """Each family once, both runners' samples under it, labelled backend/model/mode."""
    assert merged_text((LABELS_A, RUNNER_TEXT), (LABELS_B, RUNNER_TEXT)) == (
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        'llamacpp:prompt_tokens_total{backend="llama.cpp",mode="completion",model="a"} 31.0\n'
        'llamacpp:prompt_tokens_total{backend="llama.cpp",mode="embedding",model="b"} 31.0\n'
        "# HELP llamacpp:n_tokens_max Largest observed sequence length (prompt + generation)\n"
        "# TYPE llamacpp:n_tokens_max untyped\n"
        'llamacpp:n_tokens_max{backend="llama.cpp",mode="completion",model="a"} 42.0\n'
        'llamacpp:n_tokens_max{backend="llama.cpp",mode="embedding",model="b"} 42.0\n'
        "# HELP llamacpp:requests_processing Number of requests processing.\n"
        "# TYPE llamacpp:requests_processing gauge\n"
        'llamacpp:requests_processing{backend="llama.cpp",mode="completion",model="a",slot="0"} 1.0\n'
        'llamacpp:requests_processing{backend="llama.cpp",mode="embedding",model="b",slot="0"} 1.0\n'
    )


def test_first_runner_gives_help_and_type_and_unique_families_are_kept() -> None:
    """A family only one runner has is kept; a shared one takes the first runner's header."""
    other = "# HELP llamacpp:requests_processing Other words.\n" + RUNNER_TEXT.split("\n", 1)[1]
    other += "# TYPE llamacpp:only_b gauge\nllamacpp:only_b 7\n"
    text = merged_text((LABELS_A, RUNNER_TEXT), (LABELS_B, other))
    assert "Other words" not in text
    assert text.count("# TYPE llamacpp:requests_processing gauge\n") == 1
    assert text.endswith(
        "# HELP llamacpp:only_b \n"
        "# TYPE llamacpp:only_b gauge\n"
        'llamacpp:only_b{backend="llama.cpp",mode="embedding",model="b"} 7.0\n'
    )


def test_histogram_samples_stay_in_their_family() -> None:
    """Buckets, sum and count of an engine histogram stay one family, le kept."""
    text = '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 3\nh_sum 4.5\nh_count 3\n'
    (family,) = merge_runner_metrics([(LABELS_A, parse_runner_metrics(text))])
    assert (family.name, family.type, len(family.samples)) == ("h", "histogram", 4)
    rendered = render_families([family]).decode()
    assert rendered.count("# TYPE h histogram\n") == 1
    assert 'h_bucket{backend="llama.cpp",le="+Inf",mode="completion",model="a"} 3.0\n' in rendered
    assert 'h_sum{backend="llama.cpp",mode="completion",model="a"} 4.5\n' in rendered


def test_runner_labels_win_over_an_engine_label_of_the_same_name() -> None:
    """An engine sample labelled model="x" still says which runner it came from."""
    text = merged_text((LABELS_A, '# TYPE g gauge\ng{model="x",slot="1"} 2\n'))
    assert 'g{backend="llama.cpp",mode="completion",model="a",slot="1"} 2.0\n' in text
    assert 'model="x"' not in text


def test_engine_timestamps_are_kept() -> None:
    """A sample's timestamp (milliseconds) goes out as it came in."""
    text = merged_text((LABELS_A, "# TYPE g gauge\ng 2 1700000000123\n"))
    assert 'g{backend="llama.cpp",mode="completion",model="a"} 2.0 1700000000123\n' in text


@pytest.mark.parametrize(
    "text",
    [
        "# TYPE g\ng 1\n",
        "g{slot=0} 1\n",
        "g one\n",
        '# TYPE g gauge\ng{slot="0" 1\n',
        "g 1 +Inf\n",  # a timestamp the text writer cannot write
    ],
)
def test_malformed_runner_text_is_a_value_error(text: str) -> None:
    """What does not parse raises ValueError, which the scrape logs and skips."""
    with pytest.raises(ValueError):
        parse_runner_metrics(text)


def test_odd_label_values_are_escaped_everywhere() -> None:
    """Quote, backslash and newline in a model name are escaped, and read back unchanged."""
    requests = RequestStats()
    requests.begin(ODD, "completion")
    runners = RunnerStats()
    runners.watch_queue(lambda: {ODD: 3})
    runners.set_memory(ODD, "completion", 100, 80)
    daemon = exposition(requests, runners)
    engine = merged_text(({**LABELS_A, "model": ODD}, RUNNER_TEXT))
    assert f'dmr_requests_in_flight{{mode="completion",model="{ODD_ESCAPED}"}} 1.0\n' in daemon
    assert f'dmr_queue_depth{{model="{ODD_ESCAPED}"}} 3.0\n' in daemon
    assert (
        f'dmr_runner_memory_estimate_error_ratio{{mode="completion",model="{ODD_ESCAPED}"}} 0.25\n'
        in daemon
    )
    assert (
        f'llamacpp:prompt_tokens_total{{backend="llama.cpp",mode="completion",model="{ODD_ESCAPED}"}} 31.0\n'
        in engine
    )
    assert sample_value(daemon, "dmr_queue_depth", model=ODD) == 3
    assert sample_value(engine, "llamacpp:prompt_tokens_total", **{**LABELS_A, "model": ODD}) == 31


def test_daemon_families_keep_their_names_help_and_types() -> None:
    """Every family of the daemon, in order, with the header /metrics always had."""
    text = exposition(RequestStats(), RunnerStats())
    assert "".join(line + "\n" for line in text.splitlines() if line.startswith("#")) == (
        DAEMON_HEADERS
    )
    assert "_created" not in text


def test_request_stats_exposition() -> None:
    stats = RequestStats()
    timer = stats.begin("smollm2", "completion")
    assert stats.in_flight("smollm2", "completion") == 1
    timer.first_byte()
    timer.status = 200
    timer.finish()
    timer.finish()
    failed = stats.begin("smollm2", "completion")
    failed.finish()  # no status set: an error before any answer counts as status 0
    text = exposition(stats)
    assert stats.in_flight("smollm2", "completion") == 0
    assert 'dmr_requests_total{mode="completion",model="smollm2",status="200"} 1.0\n' in text
    assert 'dmr_requests_total{mode="completion",model="smollm2",status="0"} 1.0\n' in text
    assert 'dmr_request_duration_seconds_count{mode="completion",model="smollm2"} 2.0\n' in text
    assert (
        'dmr_request_time_to_first_byte_seconds_bucket{le="+Inf",mode="completion",model="smollm2"} 1.0\n'
        in text
    )
    assert 'dmr_request_time_to_first_byte_seconds_bucket{le="0.01",mode="completion",model="smollm2"} 1.0\n' in text
    assert 'dmr_requests_in_flight{mode="completion",model="smollm2"} 0.0\n' in text
    assert "_created" not in text


def test_runner_stats_exposition() -> None:
    stats = RunnerStats()
    stats.record_start()
    stats.observe_load(0.7)
    stats.observe_load(3.0)
    stats.record_stop("crash")
    stats.observe_wait("ai/a", 1.5)
    stats.set_memory("ai/a", "completion", 120 * 1024**2, 100 * 1024**2)
    text = exposition(stats)
    assert "dmr_runner_starts_total 1.0\n" in text
    assert 'dmr_runner_start_failures_total{reason="error"} 0.0\n' in text
    assert 'dmr_runner_load_seconds_bucket{le="0.5"} 0.0\n' in text
    assert 'dmr_runner_load_seconds_bucket{le="1.0"} 1.0\n' in text
    assert 'dmr_runner_load_seconds_bucket{le="+Inf"} 2.0\n' in text
    assert "dmr_runner_load_seconds_sum 3.7\n" in text
    assert 'dmr_runner_stops_total{reason="crash"} 1.0\n' in text
    assert 'dmr_queue_wait_seconds_sum{model="ai/a"} 1.5\n' in text
    assert 'dmr_queue_wait_seconds_count{model="ai/a"} 1.0\n' in text
    # The library writes large values in exponent form, as Go's client does.
    assert 'dmr_runner_memory_estimate_bytes{mode="completion",model="ai/a"} 1.2582912e+08\n' in text
    assert 'dmr_runner_memory_measured_bytes{mode="completion",model="ai/a"} 1.048576e+08\n' in text
    assert 'dmr_runner_memory_estimate_error_ratio{mode="completion",model="ai/a"} 0.2\n' in text
    assert "_created" not in text
    assert stats.mean_load_seconds() == pytest.approx(1.85)


def test_metrics_stay_out_of_the_global_registry() -> None:
    """Two apps' stats are independent and the library's default registry sees neither."""
    first, second = RequestStats(), RequestStats()
    first.begin("only-first", "completion")
    RunnerStats().record_start()
    assert "only-first" in exposition(first)
    assert "only-first" not in exposition(second)
    assert "dmr_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
