"""The request recorder's memory: the last requests of each model, and who follows them.

DMR keeps the last 10 inference requests and answers per model for ``GET /engines/requests``
(``pkg/metrics/openai_recorder.go``); so do we, with three differences that matter on a server:

- **Cheap while streaming.** A :class:`Recording` taps the function that reads the engine's
  body (:meth:`Recording.tap`): per chunk one call, one list append and an addition; no parsing,
  no lock, no clock. Nothing at all happens per chunk when the recorder is off. The request is
  cleaned (media cut, secrets redacted) when the answer has ended, and an event stream is put
  back together into one JSON answer only when someone reads it
  (:func:`~orchestrator.api.recorded_bodies.replay_answer`, cached once done).
- **Bounded.** ``recorder_max_per_model`` records per model (oldest dropped; ``0`` records
  nothing); each keeps at most :data:`MAX_KEPT_BYTES` of request and of answer (the rest is
  counted, and the record says how much was dropped).
- **Gone with the runners.** DMR drops a model's records when its runner terminates. The
  scheduler tells nobody when that happens, so the log asks it (``live_runners``, the sockets
  of the runners alive now) when the records are read and when a model is served by a runner
  it has not seen: a model none of whose recording runners is alive any more has no records.
  What a reader sees is the same as eager removal; the memory is given back at the next read.

Followers (``Accept: text/event-stream``) get each finished record through a bounded queue
(:class:`Follower`); a slow follower misses records rather than slowing a request down, as in
DMR. :meth:`RequestLog.close` ends every follower (daemon shutdown).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from orchestrator.api.recorded_bodies import clean_request, error_json, replay_answer
from orchestrator.chunked import payloads_of

log = logging.getLogger(__name__)

MAX_KEPT_BYTES = 1024 * 1024
"""Request and answer bytes kept per record (the answer may pass it by one read)."""
FOLLOWER_QUEUE = 100
"""Finished records a follower may be behind before it misses some (DMR's channel buffer)."""

ReadFn = Callable[[], bytes]
LiveRunners = Callable[[], set[str]]
ConfigFor = Callable[[str, str, int], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class ClientRequest:
    """What the recorder keeps of the client's request (never its headers but two).

    Attributes:
        method: ``POST``.
        path: The path the client used (after the ``/exp/vDD4.40`` prefix is gone).
        body: The body bytes the client sent.
        user_agent: Its ``User-Agent``.
        origin: Its ``X-Request-Origin`` (DMR's), else its face when not OpenAI.
    """

    method: str
    path: str
    body: bytes
    user_agent: str = ""
    origin: str = ""


class Entry:
    """One recorded request (guarded by :class:`RequestLog`'s lock once published)."""

    def __init__(
        self, record_id: str, model: str, model_id: str, runner: str, client: ClientRequest
    ) -> None:
        self.id = record_id
        self.model = model
        self.model_id = model_id
        self.runner = runner
        self.client = client
        self.timestamp = int(time.time())
        self.request: str | None = None  # cleaned when the answer ends
        self.status_code = 0
        self.is_sse = False
        self.parts: list[bytes] = []
        self.framed = False  # parts hold the engine's chunked framing, not payloads
        self.kept = 0
        self.dropped = 0
        self.error = ""
        self.done = False
        self._replayed: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """Return DMR's record object (``response``/``error`` only once the answer ended)."""
        request = self.request
        if request is None:
            request = clean_request(self.client.body, MAX_KEPT_BYTES)
        record: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "method": self.client.method,
            "url": self.client.path,
            "request": request,
            "timestamp": self.timestamp,
            "status_code": self.status_code,
        }
        if self.done:
            response, error = self.replay()
            if response:
                record["response"] = response
            if error:
                record["error"] = error
            if self.dropped:
                record["response_truncated_bytes"] = self.dropped
        if self.client.user_agent:
            record["user_agent"] = self.client.user_agent
        if self.client.origin:
            record["origin"] = self.client.origin
        return record

    def replay(self) -> tuple[str, str]:
        """Return ``(response, error)`` (computed once, after the end)."""
        if self._replayed is None:
            if self.error:
                self._replayed = ("", self.error)
            else:
                raw = b"".join(self.parts)
                if self.framed:
                    raw = payloads_of(raw)
                self._replayed = replay_answer(raw, status=self.status_code, is_sse=self.is_sse)
        return self._replayed


class Recording:
    """The handle of one request being recorded, held by the proxy or the engine call.

    Every method is safe to call in any order and more than once; :meth:`finish` publishes.
    """

    def __init__(self, owner: RequestLog, entry: Entry) -> None:
        self._owner = owner
        self.entry = entry

    def respond(self, status: int, is_sse: bool) -> None:
        """Note the answer's status and whether it is an event stream."""
        self.entry.status_code = status
        self.entry.is_sse = is_sse

    def tap(self, read: ReadFn) -> ReadFn:
        """Return ``read`` that also keeps what it returns (the first MAX_KEPT_BYTES)."""
        entry = self.entry
        append = entry.parts.append

        def tapped() -> bytes:
            data = read()
            if entry.kept < MAX_KEPT_BYTES:
                append(data)
                entry.kept += len(data)
            else:
                entry.dropped += len(data)
            return data

        return tapped

    def keep_framed(self, data: bytes) -> None:
        """Keep one more piece of an answer's chunked body, framing included (undone only
        when someone reads the record): one call per read, none per chunk."""
        self.entry.framed = True
        self.keep_payload(data)

    def keep_payload(self, data: bytes) -> None:
        """Keep one more piece of an answer's body (the first MAX_KEPT_BYTES in all)."""
        entry = self.entry
        if entry.kept < MAX_KEPT_BYTES:
            entry.parts.append(data)
            entry.kept += len(data)
        else:
            entry.dropped += len(data)

    def capture(self, data: bytes) -> None:
        """Keep a whole answer read at once."""
        entry = self.entry
        entry.parts.append(data[:MAX_KEPT_BYTES])
        entry.kept += min(len(data), MAX_KEPT_BYTES)
        entry.dropped += max(len(data) - MAX_KEPT_BYTES, 0)

    def fail(self, status: int, message: str) -> None:
        """Note that the request failed (``message``: the error body, JSON or text)."""
        self.entry.status_code = status or self.entry.status_code
        self.entry.error = error_json(message)

    def fail_with(self, ex: BaseException) -> None:
        """Note that the request failed with ``ex`` (an ``OrchestratorError`` or any other)."""
        status = getattr(ex, "status", 500)
        error = {
            "message": getattr(ex, "message", None) or str(ex) or type(ex).__name__,
            "type": getattr(ex, "type", "server_error"),
            "code": getattr(ex, "code", None),
        }
        self.fail(status if isinstance(status, int) else 500, json.dumps({"error": error}))

    def finish(self) -> None:
        """End the recording: clean the request, publish to followers (idempotent)."""
        self._owner.finish(self.entry)


@dataclasses.dataclass
class _Model:
    """The records of one model and the runners that served them."""

    records: collections.deque[Entry]
    runners: set[str] = dataclasses.field(default_factory=set)
    mode: str = "completion"
    context_size: int = 0


class Follower:
    """One ``Accept: text/event-stream`` reader: finished records for one model or all."""

    def __init__(self, model_id: str | None) -> None:
        self.model_id = model_id
        self.closed = False
        self._queue: queue.Queue[Entry | None] = queue.Queue(FOLLOWER_QUEUE)

    def offer(self, entry: Entry | None) -> None:
        """Queue ``entry`` (``None`` wakes the follower to end); drop it when behind."""
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            if entry is None:
                self.closed = True

    def next(self, timeout: float) -> Entry | None:
        """Return the next finished record, ``None`` after ``timeout`` or when closed."""
        if self.closed:
            return None
        try:
            entry = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if entry is None:
            self.closed = True
        return entry


class RequestLog:
    """The recorder: records per model ID, followers, and the runners' liveness.

    Args:
        max_per_model: Records kept per model (``0``: record nothing).
        live_runners: Returns the sockets of the runners alive now.
        config_for: Returns the ``config`` object of a model (model ID, mode, context size).
    """

    def __init__(
        self,
        max_per_model: int,
        live_runners: LiveRunners,
        config_for: ConfigFor | None = None,
    ) -> None:
        self.max_per_model = max_per_model
        self._live_runners = live_runners
        self._config_for = config_for or (lambda _id, _mode, _ctx: {})
        self._lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._followers: set[Follower] = set()
        self._last_ns = 0

    @property
    def enabled(self) -> bool:
        """Return whether requests are recorded."""
        return self.max_per_model > 0

    def begin(
        self,
        *,
        model: str,
        model_id: str,
        mode: str,
        runner: str,
        context_size: int,
        client: ClientRequest,
    ) -> Recording | None:
        """Start recording one request served by ``runner``; ``None`` when the log is off.

        Args:
            model: The model name the client gave.
            model_id: ``sha256:<hex>`` it resolved to.
            mode: The runner mode.
            runner: The runner's identity (its socket path).
            context_size: The runner's context size (for ``config``).
            client: The client's request.
        """
        if not self.enabled:
            return None
        with self._lock:
            held = self._models.get(model_id)
            new_runner = held is not None and runner not in held.runners
        if new_runner:
            # A runner this model's records have not seen: the old ones may all be gone.
            self._forget_dead(self._live_runners())
        with self._lock:
            # Unique even within one nanosecond tick of a coarse clock.
            stamp = max(time.time_ns(), self._last_ns + 1)
            self._last_ns = stamp
            entry = Entry(f"{model_id}_{stamp}", model, model_id, runner, client)
            held = self._models.get(model_id)
            if held is None:
                held = _Model(collections.deque(maxlen=self.max_per_model))
                self._models[model_id] = held
            held.records.append(entry)
            held.runners.add(runner)
            held.mode, held.context_size = mode, context_size
        return Recording(self, entry)

    def finish(self, entry: Entry) -> None:
        """Clean the request, mark ``entry`` done and hand it to the followers (once)."""
        if entry.done:
            return
        entry.request = clean_request(entry.client.body, MAX_KEPT_BYTES)
        # The raw body (up to 10 MiB) is not kept past the request: only its cleaned text.
        entry.client = dataclasses.replace(entry.client, body=b"")
        if len(entry.parts) > 1:
            entry.parts = [b"".join(entry.parts)]
        with self._lock:
            if entry.done:
                return
            entry.done = True
            followers = [
                f for f in self._followers if f.model_id in (None, entry.model_id)
            ]
        for follower in followers:
            follower.offer(entry)

    def _forget_dead(self, live: set[str]) -> None:
        """Drop the models none of whose recording runners is alive (and nothing in flight)."""
        with self._lock:
            for model_id, held in list(self._models.items()):
                if held.runners & live or any(not e.done for e in held.records):
                    continue
                del self._models[model_id]
                log.info("request records dropped model=%s reason=runners gone", model_id)

    def snapshot(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Return ``GET /engines/requests``'s array (of one model, or of all)."""
        self._forget_dead(self._live_runners())
        with self._lock:
            chosen = [
                (mid, held.mode, held.context_size, list(held.records))
                for mid, held in sorted(self._models.items())
                if model_id is None or mid == model_id
            ]
        return [
            {
                "count": len(records),
                "model": mid,
                "config": self._config_for(mid, mode, context_size),
                "records": [entry.to_json() for entry in records],
            }
            for mid, mode, context_size, records in chosen
            if records
        ]

    def event(self, entry: Entry) -> list[dict[str, Any]]:
        """Return one record as a follow event's data: DMR's array of one, ``count`` 1."""
        with self._lock:
            held = self._models.get(entry.model_id)
            mode, context_size = (held.mode, held.context_size) if held else ("completion", 0)
        return [
            {
                "count": 1,
                "model": entry.model_id,
                "config": self._config_for(entry.model_id, mode, context_size),
                "records": [entry.to_json()],
            }
        ]

    def existing(self, model_id: str | None) -> list[Entry]:
        """Return the records kept now (of one model or all), oldest first per model."""
        self._forget_dead(self._live_runners())
        with self._lock:
            return [
                entry
                for mid, held in sorted(self._models.items())
                if model_id is None or mid == model_id
                for entry in held.records
            ]

    def subscribe(self, model_id: str | None) -> Follower:
        """Return a new follower of finished records."""
        follower = Follower(model_id)
        with self._lock:
            self._followers.add(follower)
        return follower

    def unsubscribe(self, follower: Follower) -> None:
        """Forget ``follower`` (idempotent)."""
        with self._lock:
            self._followers.discard(follower)

    @property
    def follower_count(self) -> int:
        """Return how many followers are connected."""
        with self._lock:
            return len(self._followers)

    def close(self) -> None:
        """Wake every follower so that it ends (daemon shutdown)."""
        with self._lock:
            followers = list(self._followers)
        for follower in followers:
            follower.closed = True
            follower.offer(None)

