"""Progress lines of pulls and pushes (DMR spec section 1.3.1).

A transfer reports through a :data:`ProgressCallback`: each call receives one dict that the API
layer writes as one JSON line. :class:`ProgressReporter` builds those dicts, throttles them per
layer the way DMR does (a line when 100 ms or 1 MiB passed since the layer's last line, or when the
layer completes) and serialises calls to the callback, because layers transfer in parallel threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

ProgressCallback = Callable[[dict[str, object]], None]
Mode = Literal["pull", "push", "load"]

UPDATE_INTERVAL_SECONDS = 0.1
MIN_BYTES_FOR_UPDATE = 1024 * 1024

_VERBS: dict[str, str] = {"pull": "Downloaded", "push": "Uploaded", "load": "Transferred"}


def format_megabytes(size_bytes: int) -> str:
    """Return ``size_bytes`` as DMR prints it: MiB with two decimals and the label ``MB``."""
    return f"{size_bytes / 1024 / 1024:.2f} MB"


def progress_event(
    mode: Mode, *, total: int, layer_id: str, layer_size: int, current: int
) -> dict[str, object]:
    """Return one ``progress`` line (``"Downloaded: 12.34 MB"`` and the numbers)."""
    return {
        "type": "progress",
        "message": f"{_VERBS[mode]}: {format_megabytes(current)}",
        "total": total,
        "layer": {"id": layer_id, "size": layer_size, "current": current},
        "mode": mode,
    }


def status_event(
    kind: Literal["success", "warning", "error"], message: str, mode: Mode
) -> dict[str, object]:
    """Return a ``success``, ``warning`` or ``error`` line with zeroed numbers, as DMR sends."""
    return {
        "type": kind,
        "message": message,
        "total": 0,
        "layer": {"size": 0, "current": 0},
        "mode": mode,
    }


class _LayerState:
    __slots__ = ("last_bytes", "last_time", "done")

    def __init__(self) -> None:
        self.last_bytes = -1
        self.last_time = float("-inf")
        self.done = False


class ProgressReporter:
    """Throttle and serialise the progress lines of one transfer.

    Args:
        callback: Receives each line; ``None`` makes every method a no-op.
        mode: ``pull``, ``push`` or ``load`` (sets the verb and the ``mode`` field).
        total: Sum of all layer sizes of the artifact.
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        callback: ProgressCallback | None,
        *,
        mode: Mode,
        total: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.callback = callback
        self.mode: Mode = mode
        self.total = total
        self._clock = clock
        self._lock = threading.Lock()
        self._layers: dict[str, _LayerState] = {}

    def update(self, layer_id: str, layer_size: int, current: int) -> None:
        """Report that ``current`` bytes of a layer are done; emit a line if due.

        A line goes out when at least 100 ms or 1 MiB passed since the layer's previous line, or
        when ``current`` reaches ``layer_size`` (once). Safe to call from several threads.
        """
        if self.callback is None:
            return
        with self._lock:
            state = self._layers.setdefault(layer_id, _LayerState())
            now = self._clock()
            complete = current >= layer_size
            if complete and state.done:
                return
            due = (
                complete
                or now - state.last_time >= UPDATE_INTERVAL_SECONDS
                or current - state.last_bytes >= MIN_BYTES_FOR_UPDATE
            )
            if not due or current == state.last_bytes:
                return
            state.last_time = now
            state.last_bytes = current
            state.done = complete
            # NOTE: the callback runs under the lock so lines never interleave mid-write and
            # each layer's numbers only grow in the stream.
            self.callback(
                progress_event(
                    self.mode,
                    total=self.total,
                    layer_id=layer_id,
                    layer_size=layer_size,
                    current=current,
                )
            )

    def success(self, message: str) -> None:
        """Emit the final ``success`` line."""
        self._emit(status_event("success", message, self.mode))

    def warning(self, message: str) -> None:
        """Emit a ``warning`` line."""
        self._emit(status_event("warning", message, self.mode))

    def error(self, message: str) -> None:
        """Emit an ``error`` line (``Error: <text>`` is the caller's choice of wording)."""
        self._emit(status_event("error", message, self.mode))

    def _emit(self, event: dict[str, object]) -> None:
        if self.callback is None:
            return
        with self._lock:
            self.callback(event)
