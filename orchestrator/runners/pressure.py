"""The pressure sampler: evict idle runners when the host runs short of memory.

Admission keeps new runners within the budget, but the host's other processes (and runners
growing after they load) can still eat into the reserve. Every few seconds this thread reads
how far free RAM and VRAM are below their reserves; only after :data:`PRESSURE_SAMPLES` readings
in a row are under (one reading is noise: a page-cache flush, a build starting) does it call the
scheduler's eviction callback, which stops idle runners only — never one with requests in
flight. The count then starts again, so the freed memory has time to show before more goes.

The same thread runs the scheduler's periodic chores (``on_tick``): reloading the default
model when the machine has gone idle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from orchestrator.memory.sizes import format_bytes

log = logging.getLogger(__name__)

PRESSURE_INTERVAL_SECONDS = 2.0
PRESSURE_SAMPLES = 3
JOIN_TIMEOUT_SECONDS = 5.0


class PressureSampler:
    """A background thread that samples memory pressure and asks for evictions.

    Args:
        deficit: Returns ``(ram, vram)`` bytes below the reserves (0 when not under).
        on_pressure: Called with the deficit after ``samples`` readings in a row were under.
        on_tick: Called after every reading (periodic chores); may be ``None``.
        interval: Seconds between readings.
        samples: Readings in a row that must be under before ``on_pressure`` is called.
    """

    def __init__(
        self,
        *,
        deficit: Callable[[], tuple[int, int]],
        on_pressure: Callable[[int, int], None],
        on_tick: Callable[[], None] | None = None,
        interval: float = PRESSURE_INTERVAL_SECONDS,
        samples: int = PRESSURE_SAMPLES,
    ) -> None:
        self._deficit = deficit
        self._on_pressure = on_pressure
        self._on_tick = on_tick
        self.interval = interval
        self.samples = max(samples, 1)
        self.under = 0
        self._warned = False  # one warning per episode of pressure, not one per eviction round
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="memory-pressure", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = JOIN_TIMEOUT_SECONDS) -> None:
        """Stop the thread and wait for it, at most ``timeout`` seconds."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def sample(self) -> bool:
        """Take one reading; return whether it triggered ``on_pressure``."""
        ram, vram = self._deficit()
        if ram <= 0 and vram <= 0:
            if self._warned:
                log.info("memory back above the reserve")
            self.under = 0
            self._warned = False
            return False
        self.under += 1
        log.debug("memory under reserve ram=%d vram=%d samples=%d", ram, vram, self.under)
        if self.under < self.samples:
            return False
        self.under = 0
        log.log(
            logging.DEBUG if self._warned else logging.WARNING,
            "memory under the reserve for %d samples, evicting idle runners ram_short=%s "
            "vram_short=%s",
            self.samples, format_bytes(ram), format_bytes(vram),
        )
        self._warned = True
        self._on_pressure(ram, vram)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
                if self._on_tick is not None:
                    self._on_tick()
            except Exception:  # the sampler must survive a failed probe or a bug in a chore
                log.exception("memory pressure sample failed")
