"""The pressure monitor: evict idle runners when the host runs short of memory.

Admission keeps new runners within the budget, but the host's other processes (and runners
growing after they load) can still eat into the reserve. Every few seconds the scheduler's
chores thread (:mod:`~orchestrator.runners.chores`) takes a reading of how far free RAM and VRAM
are below their reserves; only after :data:`PRESSURE_SAMPLES` readings in a row are under (one
reading is noise: a page-cache flush, a build starting) does the monitor call the eviction
callback, which stops idle runners only — never one with requests in flight. The count then
starts again, so the freed memory has time to show before more goes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from orchestrator.memory.sizes import format_bytes

log = logging.getLogger(__name__)

PRESSURE_INTERVAL_SECONDS = 2.0
PRESSURE_SAMPLES = 3


class PressureMonitor:
    """Counts readings under the reserve and asks for evictions after enough in a row.

    Args:
        deficit: Returns ``(ram, vram)`` bytes below the reserves (0 when not under).
        on_pressure: Called with the deficit after ``samples`` readings in a row were under.
        samples: Readings in a row that must be under before ``on_pressure`` is called.
    """

    def __init__(
        self,
        *,
        deficit: Callable[[], tuple[int, int]],
        on_pressure: Callable[[int, int], None],
        samples: int = PRESSURE_SAMPLES,
    ) -> None:
        self._deficit = deficit
        self._on_pressure = on_pressure
        self.samples = max(samples, 1)
        self.under = 0
        self._warned = False  # one warning per episode of pressure, not one per eviction round

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
