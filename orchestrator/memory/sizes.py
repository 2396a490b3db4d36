"""Memory sizes as people write them (``4GiB``, ``512MiB``, ``10%``) and as we print them.

Binary suffixes (``KiB``, ``MiB``, ``GiB``, ``TiB``) and the single letters Docker's ``-m`` flag
accepts (``k``, ``m``, ``g``, ``t``) are powers of 1024; ``kB``, ``MB``, ``GB``, ``TB`` are powers
of 1000, as on a disk label. A bare number is bytes. Case does not matter, a space between the
number and the unit is allowed, and fractions (``1.5GiB``) are rounded down to whole bytes.

The memory reserve may also be a percentage of the host's total (``10%``); an empty reserve
means the default, ``max(10 % of total, 1 GiB)``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

DEFAULT_RESERVE_FRACTION = 0.10
DEFAULT_RESERVE_MIN_BYTES = 1 * GiB

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kib": KiB,
    "kb": 1000,
    "m": MiB,
    "mib": MiB,
    "mb": 1000**2,
    "g": GiB,
    "gib": GiB,
    "gb": 1000**3,
    "t": TiB,
    "tib": TiB,
    "tb": 1000**4,
}
_SIZE = re.compile(r"^(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]*)$")
_PERCENT = re.compile(r"^(?P<number>\d+(?:\.\d*)?|\.\d+)\s*%$")
# (factor, label), largest first: format_bytes() uses the first factor the size reaches.
BINARY_UNITS: tuple[tuple[float, str], ...] = (
    (TiB, "TiB"),
    (GiB, "GiB"),
    (MiB, "MiB"),
    (KiB, "KiB"),
)


def parse_size(value: object) -> int:
    """Parse a memory size into bytes.

    Accepts an ``int`` (bytes) or text such as ``4GiB``, ``512 MiB``, ``2g``, ``1.5GB`` or
    ``1048576``. Usable as a settings converter: it raises ``ValueError`` with a short reason.

    Raises:
        ValueError: The value is negative, empty or has an unknown unit.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4GiB, 512MiB or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a size of 0 or more bytes")
        return value
    text = str(value).strip().lower()
    match = _SIZE.match(text)
    if match is None or match.group("unit") not in _UNITS:
        raise ValueError(f"'{value}' is not a size; write it like 4GiB, 512MiB or 1073741824")
    return math.floor(float(match.group("number")) * _UNITS[match.group("unit")])


@dataclasses.dataclass(frozen=True)
class Reserve:
    """Memory kept free for the rest of the host: a fixed size or a fraction of the total.

    Attributes:
        size_bytes: Fixed reserve in bytes, or ``None`` when the reserve is a fraction.
        fraction: Fraction of the total (``0.1`` for ``10%``), or ``None`` for a fixed size.
    """

    size_bytes: int | None = None
    fraction: float | None = None

    @property
    def is_default(self) -> bool:
        """Return whether this is the default reserve (neither size nor fraction given)."""
        return self.size_bytes is None and self.fraction is None

    def resolve(self, total_bytes: int) -> int:
        """Return the reserve in bytes for a device of ``total_bytes``.

        The default is ``max(10 % of total, 1 GiB)``, never more than the total itself.
        """
        if self.size_bytes is not None:
            return self.size_bytes
        if self.fraction is not None:
            return math.floor(total_bytes * self.fraction)
        default = max(math.floor(total_bytes * DEFAULT_RESERVE_FRACTION), DEFAULT_RESERVE_MIN_BYTES)
        return min(default, total_bytes)

    def describe(self) -> str:
        """Return the reserve as a user would write it (``10%``, ``2 GiB``, ``default``)."""
        if self.size_bytes is not None:
            return format_bytes(self.size_bytes)
        if self.fraction is not None:
            return f"{self.fraction * 100:g}%"
        return "default (10% or 1 GiB)"


def parse_reserve(value: object) -> Reserve:
    """Parse ``DMR_MEMORY_RESERVE``: empty (default), a percentage or a size.

    Raises:
        ValueError: The value is not empty, a percentage from 0 to 100, or a size.
    """
    if isinstance(value, Reserve):
        return value
    text = "" if value is None else str(value).strip()
    if not text:
        return Reserve()
    match = _PERCENT.match(text)
    if match is not None:
        percent = float(match.group("number"))
        if percent > 100:
            raise ValueError(f"'{value}' is more than 100%; write a percentage from 0% to 100%")
        return Reserve(fraction=percent / 100)
    return Reserve(size_bytes=parse_size(text))


def check_reserve(value: object) -> str:
    """Validate a reserve and return it as text; a settings converter for the config table.

    Raises:
        ValueError: As :func:`parse_reserve`.
    """
    parse_reserve(value)
    return "" if value is None else str(value).strip()


def format_bytes(
    size_bytes: float,
    *,
    decimals: int = 1,
    separator: str = " ",
    units: Sequence[tuple[float, str]] = BINARY_UNITS,
) -> str:
    """Render a size in the largest unit it reaches: ``1.5 GiB``, ``640 MiB``, ``512 B``.

    Decimals that are all zero are dropped (``4 GiB``, not ``4.0 GiB``), so a whole size reads
    like the setting it came from; below the smallest unit the size is whole bytes.

    Args:
        size_bytes: The size; a negative one keeps its sign.
        decimals: Decimals after the point (rounded half to even, as ``format()`` does).
        separator: Text between the number and the unit.
        units: ``(factor, label)`` pairs, largest factor first.
    """
    size = float(size_bytes)
    sign = "-" if size < 0 else ""
    size = abs(size)
    for factor, unit in units:
        if size >= factor:
            # NOTE(memory): one decimal (the default) is enough to compare needed and free
            # memory at a glance.
            text = f"{size / factor:.{decimals}f}".removesuffix("." + "0" * decimals)
            return f"{sign}{text}{separator}{unit}"
    return f"{sign}{int(size)}{separator}B"
