"""Show pull/push/load progress lines (DMR spec section 1.3.1) to the user.

On a terminal, :class:`ProgressDisplay` keeps one line per layer up to date (Docker's look:
``3f4a9c2b1d0e: [=======>      ]  45.2MB/98.4MB  12.1MB/s  ETA 4s``) by moving the cursor
up and redrawing. Elsewhere (a pipe, a CI log) it prints plain lines: one when a layer starts,
one every :data:`PLAIN_STEP_PERCENT` percent, one when it completes. The clock is injectable so
the rendering is testable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from orchestrator.modelcli.formatting import human_duration, human_size

BAR_WIDTH = 30
PLAIN_STEP_PERCENT = 25
_VERB_DONE = {"pull": "Pull complete", "push": "Push complete", "load": "Transfer complete"}
_VERB_DOING = {"pull": "Downloading", "push": "Uploading", "load": "Transferring"}


@dataclass
class _Layer:
    layer_id: str
    size: int
    current: int = 0
    started: float = 0.0
    first_bytes: int = 0
    last_plain_step: int = -1
    done: bool = False
    # Recent (time, bytes) samples; the speed is measured over the last few seconds.
    samples: list[tuple[float, int]] = field(default_factory=list)


def progress_bar(current: int, total: int, width: int = BAR_WIDTH) -> str:
    """Return ``[=====>    ]`` for ``current`` of ``total`` (full when total is 0)."""
    if total <= 0:
        return "[" + "=" * width + "]"
    filled = min(width, int(width * current / total))
    if filled >= width:
        return "[" + "=" * width + "]"
    return "[" + "=" * filled + ">" + " " * (width - filled - 1) + "]"


def format_eta(seconds: float) -> str:
    """Return a short ETA: ``4s``, ``2m05s``, ``1h02m``."""
    whole = max(0, int(seconds + 0.5))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


class ProgressDisplay:
    """Render a stream of progress events for a person.

    Args:
        out: Where to draw (the CLI uses stderr, so stdout stays clean for scripts).
        is_tty: Redraw bars in place (True) or print plain lines (False).
        mode: ``pull``, ``push`` or ``load`` (sets the words).
        clock: Monotonic clock, injectable for tests.
    """

    def __init__(
        self,
        out: TextIO,
        *,
        is_tty: bool,
        mode: str = "pull",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._out = out
        self._tty = is_tty
        self._mode = mode
        self._clock = clock
        self._layers: dict[str, _Layer] = {}
        self._drawn_lines = 0

    def handle(self, event: dict[str, Any]) -> None:
        """Take one event; only ``progress`` events are drawn (the caller prints the rest)."""
        if event.get("type") != "progress":
            if event.get("type") == "warning" and event.get("message"):
                self._print_plain(f"Warning: {event['message']}")
            return
        layer_info = event.get("layer") or {}
        layer_id = str(layer_info.get("id") or "")
        if not layer_id:
            return
        now = self._clock()
        size = int(layer_info.get("size") or 0)
        current = int(layer_info.get("current") or 0)
        layer = self._layers.get(layer_id)
        if layer is None:
            layer = _Layer(layer_id, size, started=now, first_bytes=current)
            self._layers[layer_id] = layer
        layer.size = size or layer.size
        layer.current = current
        layer.samples.append((now, current))
        # Keep about five seconds of samples for the speed.
        while len(layer.samples) > 2 and now - layer.samples[0][0] > 5.0:
            layer.samples.pop(0)
        just_done = not layer.done and layer.size > 0 and current >= layer.size
        layer.done = layer.done or just_done
        if self._tty:
            self._redraw()
        else:
            self._plain_update(layer, just_done)

    def finish(self) -> None:
        """Stop drawing (the bars stay on screen); call once the stream ended."""
        if self._tty and self._drawn_lines:
            self._out.flush()
        self._drawn_lines = 0

    def speed(self, layer_id: str) -> float:
        """Return the recent transfer speed of a layer in bytes per second (0 if unknown)."""
        layer = self._layers.get(layer_id)
        if layer is None or len(layer.samples) < 2:
            return 0.0
        (first_time, first_bytes), (last_time, last_bytes) = layer.samples[0], layer.samples[-1]
        elapsed = last_time - first_time
        return (last_bytes - first_bytes) / elapsed if elapsed > 0 else 0.0

    def layer_line(self, layer_id: str) -> str:
        """Return the one-line rendering of a layer (what the terminal shows)."""
        layer = self._layers[layer_id]
        short = layer.layer_id.removeprefix("sha256:")[:12]
        if layer.done:
            return f"{short}: {_VERB_DONE.get(self._mode, 'Complete')}"
        parts = [
            progress_bar(layer.current, layer.size),
            f"{human_size(layer.current, precision=1)}/{human_size(layer.size, precision=1)}",
        ]
        speed = self.speed(layer_id)
        if speed > 0:
            parts.append(f"{human_size(speed, precision=1)}/s")
            parts.append(f"ETA {format_eta((layer.size - layer.current) / speed)}")
        return f"{short}: " + "  ".join(parts)

    def _redraw(self) -> None:
        if self._drawn_lines:
            # Cursor up to the first bar, then rewrite every line (clearing leftovers).
            self._out.write(f"\x1b[{self._drawn_lines}F")
        for layer_id in self._layers:
            self._out.write("\x1b[2K" + self.layer_line(layer_id) + "\n")
        self._drawn_lines = len(self._layers)
        self._out.flush()

    def _plain_update(self, layer: _Layer, just_done: bool) -> None:
        short = layer.layer_id.removeprefix("sha256:")[:12]
        if just_done:
            elapsed = self._clock() - layer.started
            self._print_plain(
                f"{short}: {_VERB_DONE.get(self._mode, 'Complete')} "
                f"({human_size(layer.size)} in {human_duration(elapsed).lower()})"
            )
            return
        if layer.done or layer.size <= 0:
            return
        step = int(100 * layer.current / layer.size) // PLAIN_STEP_PERCENT
        if step > layer.last_plain_step:
            layer.last_plain_step = step
            self._print_plain(
                f"{short}: {_VERB_DOING.get(self._mode, 'Transferring')} "
                f"{human_size(layer.current)} of {human_size(layer.size)}"
            )

    def _print_plain(self, text: str) -> None:
        if self._tty and self._drawn_lines:
            # A message between redraws: print it and start the bars below it.
            self._drawn_lines = 0
        self._out.write(text + "\n")
        self._out.flush()
