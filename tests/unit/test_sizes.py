"""Memory sizes: parsing ``4GiB``/``512MiB``/bytes/percentages and printing them."""

from __future__ import annotations

import pytest

from orchestrator.memory.sizes import (
    GiB,
    MiB,
    Reserve,
    check_reserve,
    format_bytes,
    parse_reserve,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("512 mib", 512 * 1024**2),
        ("1073741824", 1073741824),
        (" 1073741824 ", 1073741824),
        ("2g", 2 * 1024**3),  # Docker's -m letters are binary
        ("300m", 300 * 1024**2),
        ("64k", 64 * 1024),
        ("1T", 1024**4),
        ("1GB", 1_000_000_000),  # two-letter SI units are decimal, as on a disk label
        ("5MB", 5_000_000),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("0.5KiB", 512),
        ("100b", 100),
        ("0", 0),
        (12345, 12345),
    ],
)
def test_parse_size_accepts_the_usual_spellings(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "4 GiBs", "-1", "1e9", "four", "4 PiB", "1.2.3G"])
def test_parse_size_rejects_nonsense_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="4GiB"):
        parse_size(text)


def test_parse_size_rejects_negative_and_boolean_values() -> None:
    with pytest.raises(ValueError):
        parse_size(-5)
    with pytest.raises(ValueError):
        parse_size(True)


def test_default_reserve_is_ten_percent_or_one_gib() -> None:
    reserve = parse_reserve("")
    assert reserve.is_default
    assert reserve.resolve(64 * GiB) == 64 * GiB // 10  # 6.4 GiB > 1 GiB
    assert reserve.resolve(4 * GiB) == 1 * GiB  # 10 % is 409.6 MiB, the floor wins
    assert reserve.resolve(512 * MiB) == 512 * MiB  # never more than the device itself


def test_reserve_as_percentage_and_as_size() -> None:
    assert parse_reserve("25%").resolve(8 * GiB) == 2 * GiB
    assert parse_reserve("2.5 %").resolve(1000) == 25
    assert parse_reserve("2GiB").resolve(64 * GiB) == 2 * GiB
    assert parse_reserve("0").resolve(64 * GiB) == 0
    assert parse_reserve(None) == Reserve()
    assert parse_reserve(Reserve(size_bytes=5)) == Reserve(size_bytes=5)


@pytest.mark.parametrize("text", ["101%", "-5%", "lots", "%"])
def test_reserve_rejects_bad_values(text: str) -> None:
    with pytest.raises(ValueError):
        parse_reserve(text)


def test_check_reserve_is_a_settings_converter() -> None:
    assert check_reserve(" 10% ") == "10%"
    assert check_reserve("") == ""
    with pytest.raises(ValueError):
        check_reserve("ten percent")


def test_reserve_describes_itself() -> None:
    assert parse_reserve("10%").describe() == "10%"
    assert parse_reserve("2GiB").describe() == "2 GiB"
    assert "default" in parse_reserve("").describe()


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (98_362_432, "93.8 MiB"),
        (4 * GiB, "4 GiB"),
        (int(1.25 * GiB), "1.2 GiB"),  # one decimal, rounded half to even by format()
        (3 * 1024**4, "3 TiB"),
        (-2 * MiB, "-2 MiB"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


def test_format_bytes_with_other_decimals_separator_and_units() -> None:
    units = ((1e6, "MB"), (1e3, "kB"))
    assert format_bytes(1_500_000, decimals=2, separator="", units=units) == "1.50MB"
    assert format_bytes(2_000, decimals=2, separator="", units=units) == "2kB"
    assert format_bytes(999, decimals=2, separator="", units=units) == "999B"


def test_format_and_parse_round_trip_for_whole_units() -> None:
    for size in (512 * MiB, 4 * GiB, 7 * 1024**4):
        assert parse_size(format_bytes(size).replace(" ", "")) == size
