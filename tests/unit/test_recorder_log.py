"""The request log: bounded per model, gone with the runners, cheap taps, followers."""

from __future__ import annotations

import json
import threading

from orchestrator.api.request_log import (
    FOLLOWER_QUEUE,
    MAX_KEPT_BYTES,
    ClientRequest,
    RequestLog,
)
from orchestrator.errors import RunnerCrashedError

MODEL_ID = "sha256:" + "a" * 64
OTHER_ID = "sha256:" + "b" * 64


class Runners:
    """The sockets of the runners alive now, as the scheduler would say."""

    def __init__(self, *live: str) -> None:
        self.live = set(live)
        self.asked = 0

    def __call__(self) -> set[str]:
        self.asked += 1
        return set(self.live)


def client(body: bytes = b'{"model":"m"}', path: str = "/v1/chat/completions") -> ClientRequest:
    return ClientRequest("POST", path, body, "test-agent/1", "")


def record(log: RequestLog, model_id: str = MODEL_ID, runner: str = "/run/r1.sock",
           body: bytes = b'{"model":"m"}', answer: bytes = b'{"ok":true}') -> str:  # fmt: skip
    recording = log.begin(model="m", model_id=model_id, mode="completion", runner=runner,
                          context_size=4096, client=client(body))  # fmt: skip
    assert recording is not None
    recording.respond(200, False)
    recording.capture(answer)
    recording.finish()
    return recording.entry.id


def test_off_when_max_is_zero() -> None:
    log = RequestLog(0, Runners())
    assert not log.enabled
    assert log.begin(model="m", model_id=MODEL_ID, mode="completion", runner="r",
                     context_size=0, client=client()) is None  # fmt: skip


def test_oldest_records_are_dropped_past_the_bound() -> None:
    log = RequestLog(3, Runners("/run/r1.sock"))
    ids = [record(log, body=json.dumps({"model": "m", "n": n}).encode()) for n in range(5)]
    [group] = log.snapshot()
    assert group["count"] == 3
    assert [r["id"] for r in group["records"]] == ids[2:]
    assert len(set(ids)) == 5 and all(i.startswith(MODEL_ID + "_") for i in ids)


def test_snapshot_shape_and_config() -> None:
    log = RequestLog(10, Runners("/run/r1.sock"), lambda mid, mode, ctx: {"context-size": ctx})
    record(log)
    [group] = log.snapshot(MODEL_ID)
    assert group["model"] == MODEL_ID and group["config"] == {"context-size": 4096}
    [entry] = group["records"]
    assert entry["method"] == "POST" and entry["url"] == "/v1/chat/completions"
    assert entry["status_code"] == 200 and entry["response"] == '{"ok":true}'
    assert entry["user_agent"] == "test-agent/1" and "error" not in entry
    assert log.snapshot(OTHER_ID) == []


def test_records_go_when_every_runner_that_served_them_is_gone() -> None:
    runners = Runners("/run/r1.sock", "/run/r2.sock")
    log = RequestLog(10, runners)
    record(log, runner="/run/r1.sock")
    record(log, runner="/run/r2.sock")  # same model, another mode's runner
    runners.live.discard("/run/r1.sock")
    assert log.snapshot()[0]["count"] == 2  # one of its runners is still alive
    runners.live.clear()
    assert log.snapshot() == []


def test_a_new_runner_after_the_old_ones_stopped_starts_a_fresh_history() -> None:
    runners = Runners("/run/r1.sock")
    log = RequestLog(10, runners)
    record(log, runner="/run/r1.sock")
    runners.live = {"/run/r9.sock"}
    new_id = record(log, runner="/run/r9.sock")
    assert [r["id"] for r in log.snapshot()[0]["records"]] == [new_id]


def test_the_same_runner_asks_nobody_about_liveness() -> None:
    runners = Runners("/run/r1.sock")
    log = RequestLog(10, runners)
    for _ in range(5):
        record(log)
    assert runners.asked == 0  # begin() only asks when a model meets a new runner


def test_tap_keeps_chunks_until_the_cap_and_counts_the_rest() -> None:
    log = RequestLog(10, Runners("r"))
    recording = log.begin(model="m", model_id=MODEL_ID, mode="completion", runner="r",
                          context_size=0, client=client())  # fmt: skip
    assert recording is not None
    recording.respond(200, False)
    chunks = iter([b"x" * (MAX_KEPT_BYTES - 10), b"y" * 20, b"z" * 30, b""])
    read = recording.tap(lambda: next(chunks))
    seen = [read() for _ in range(4)]
    assert seen[1] == b"y" * 20  # the tap passes every chunk on unchanged
    recording.finish()
    [entry] = log.snapshot()[0]["records"]
    assert entry["response_truncated_bytes"] == 30
    assert entry["response"].endswith("y" * 20)


def test_in_flight_record_has_no_answer_yet_then_an_error() -> None:
    log = RequestLog(10, Runners("r"))
    recording = log.begin(model="m", model_id=MODEL_ID, mode="completion", runner="r",
                          context_size=0, client=client())  # fmt: skip
    assert recording is not None
    [entry] = log.snapshot()[0]["records"]
    assert entry["status_code"] == 0 and "response" not in entry and "error" not in entry
    recording.fail_with(RunnerCrashedError("the runner of model 'm' stopped"))
    recording.finish()
    recording.finish()  # idempotent
    [entry] = log.snapshot()[0]["records"]
    assert entry["status_code"] == 502
    assert json.loads(entry["error"])["error"]["code"] == "runner_crashed"
    assert "response" not in entry


def test_followers_get_finished_records_of_their_model_only() -> None:
    log = RequestLog(10, Runners("r"))
    mine, everyone = log.subscribe(MODEL_ID), log.subscribe(None)
    record(log, model_id=OTHER_ID, runner="r")
    first = record(log, runner="r")
    got = mine.next(1.0)
    assert got is not None and got.id == first
    assert mine.next(0.01) is None
    assert [everyone.next(1.0), everyone.next(1.0)] != [None, None]
    [event] = log.event(got)
    assert event["count"] == 1 and event["model"] == MODEL_ID


def test_a_slow_follower_misses_records_instead_of_blocking() -> None:
    log = RequestLog(10, Runners("r"))
    follower = log.subscribe(None)
    for _ in range(FOLLOWER_QUEUE + 5):
        record(log, runner="r")  # never blocks
    received = 0
    while follower.next(0.0) is not None:
        received += 1
    assert received == FOLLOWER_QUEUE


def test_close_wakes_a_waiting_follower() -> None:
    log = RequestLog(10, Runners("r"))
    follower = log.subscribe(None)
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.append(follower.next(30.0)))
    waiter.start()
    log.close()
    waiter.join(5.0)
    assert not waiter.is_alive() and results == [None] and follower.closed
    log.unsubscribe(follower)
    assert log.follower_count == 0


def test_a_follow_is_served_in_the_work_lane() -> None:
    """A follow holds its thread for up to an hour: never in the control lane."""
    from orchestrator.httpserver.lanes import Lane, lane_for

    assert lane_for("GET", "/engines/requests", {"include_existing": "true"}) is Lane.WORK
    assert lane_for("GET", "/exp/vDD4.40/engines/requests", {}) is Lane.WORK


def test_the_raw_body_is_let_go_once_the_answer_ended() -> None:
    log = RequestLog(10, Runners("r"))
    body = json.dumps({"model": "m", "images": ["QUJD" * 5000]}).encode()
    recording = log.begin(model="m", model_id=MODEL_ID, mode="completion", runner="r",
                          context_size=0, client=client(body))  # fmt: skip
    assert recording is not None
    recording.finish()
    assert recording.entry.client.body == b""
    request = log.snapshot()[0]["records"][0]["request"]
    assert len(request) < 300 and "truncated 19900 chars" in request
