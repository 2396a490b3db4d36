"""Progress lines: shape, wording and per-layer throttling (DMR spec 1.3.1)."""

from __future__ import annotations

import threading

from orchestrator.registry.progress import (
    ProgressReporter,
    format_megabytes,
    progress_event,
    status_event,
)

MIB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def collect() -> tuple[list[dict[str, object]], ProgressReporter, FakeClock]:
    events: list[dict[str, object]] = []
    clock = FakeClock()
    reporter = ProgressReporter(events.append, mode="pull", total=10 * MIB, clock=clock)
    return events, reporter, clock


def test_format_megabytes_uses_mib_with_two_decimals() -> None:
    assert format_megabytes(0) == "0.00 MB"
    assert format_megabytes(MIB) == "1.00 MB"
    assert format_megabytes(12_939_428) == "12.34 MB"


def test_progress_event_shape() -> None:
    event = progress_event("pull", total=30, layer_id="sha256:ab", layer_size=20, current=5)
    assert event == {
        "type": "progress",
        "message": "Downloaded: 0.00 MB",
        "total": 30,
        "layer": {"id": "sha256:ab", "size": 20, "current": 5},
        "mode": "pull",
    }
    assert progress_event("push", total=1, layer_id="x", layer_size=1, current=1)["message"] == (
        "Uploaded: 0.00 MB"
    )
    assert progress_event("load", total=1, layer_id="x", layer_size=1, current=1)["message"] == (
        "Transferred: 0.00 MB"
    )


def test_status_event_shape_matches_dmr_success_line() -> None:
    assert status_event("success", "Model pulled successfully", "pull") == {
        "type": "success",
        "message": "Model pulled successfully",
        "total": 0,
        "layer": {"size": 0, "current": 0},
        "mode": "pull",
    }


def test_small_fast_updates_are_throttled() -> None:
    events, reporter, clock = collect()
    reporter.update("sha256:a", 10 * MIB, 1)
    for step in range(2, 50):
        clock.now += 0.001
        reporter.update("sha256:a", 10 * MIB, step * 1000)
    assert len(events) == 1


def test_update_after_interval_is_emitted() -> None:
    events, reporter, clock = collect()
    reporter.update("sha256:a", 10 * MIB, 1)
    clock.now += 0.11
    reporter.update("sha256:a", 10 * MIB, 2)
    assert [e["layer"]["current"] for e in events] == [1, 2]  # type: ignore[index]


def test_update_after_one_mib_is_emitted_without_waiting() -> None:
    events, reporter, _clock = collect()
    reporter.update("sha256:a", 10 * MIB, 1)
    reporter.update("sha256:a", 10 * MIB, MIB)
    reporter.update("sha256:a", 10 * MIB, MIB + 1)
    assert [e["layer"]["current"] for e in events] == [1, MIB + 1]  # type: ignore[index]


def test_completion_is_always_emitted_once() -> None:
    events, reporter, _clock = collect()
    reporter.update("sha256:a", 100, 1)
    reporter.update("sha256:a", 100, 100)
    reporter.update("sha256:a", 100, 100)
    assert [e["layer"]["current"] for e in events] == [1, 100]  # type: ignore[index]


def test_layers_are_throttled_independently() -> None:
    events, reporter, _clock = collect()
    reporter.update("sha256:a", 10 * MIB, 5)
    reporter.update("sha256:b", 10 * MIB, 5)
    reporter.update("sha256:a", 10 * MIB, 6)
    assert [e["layer"]["id"] for e in events] == ["sha256:a", "sha256:b"]  # type: ignore[index]
    assert all(e["total"] == 10 * MIB for e in events)


def test_no_callback_is_a_no_op() -> None:
    reporter = ProgressReporter(None, mode="push", total=1)
    reporter.update("sha256:a", 1, 1)
    reporter.success("Model pushed successfully")


def test_success_warning_and_error_lines() -> None:
    events, reporter, _clock = collect()
    reporter.warning("careful")
    reporter.error("Error: broken")
    reporter.success("Model pulled successfully")
    assert [(e["type"], e["message"]) for e in events] == [
        ("warning", "careful"),
        ("error", "Error: broken"),
        ("success", "Model pulled successfully"),
    ]


def test_parallel_layers_never_interleave_and_only_grow() -> None:
    events: list[dict[str, object]] = []
    inside = threading.Lock()
    overlaps: list[int] = []

    def callback(event: dict[str, object]) -> None:
        if not inside.acquire(blocking=False):
            overlaps.append(1)
            return
        try:
            events.append(event)
        finally:
            inside.release()

    reporter = ProgressReporter(callback, mode="pull", total=8 * 64 * MIB)

    def worker(layer: str) -> None:
        for step in range(1, 65):
            reporter.update(layer, 64 * MIB, step * MIB)

    threads = [threading.Thread(target=worker, args=(f"sha256:{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not overlaps
    for i in range(8):
        seen = [e["layer"]["current"] for e in events if e["layer"]["id"] == f"sha256:{i}"]  # type: ignore[index]
        assert seen == sorted(seen)
        assert seen[-1] == 64 * MIB
