"""Numbers as a person reads them: bytes and seconds with a unit that fits their size and three
significant digits (not 0.00 GB, 6.873e-05 GB or 132.01176 s)."""

from __future__ import annotations

BYTES = (("GB", 1e9), ("MB", 1e6), ("KB", 1e3))  # decimal, as GB = 1e9 bytes everywhere in ftmix
SUBSECOND = (("ms", 1e-3), ("us", 1e-6))


def human_bytes(n: float) -> str:
    return _scaled(n, BYTES, f"{int(round(n))} B")


def human_seconds(s: float) -> str:
    size = abs(s)
    if size >= 3600:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    if size >= 60:
        return f"{int(s // 60)} min {int(round(s % 60))} s"
    if size >= 1 or size == 0:
        return f"{_three(s)} s"
    return _scaled(s, SUBSECOND, f"{_three(s * 1e6)} us")


def _scaled(x: float, units: tuple, smallest: str) -> str:
    """``x`` in the largest unit it reaches, else ``smallest``."""
    for unit, scale in units:
        if abs(x) >= scale:
            return f"{_three(x / scale)} {unit}"
    return smallest


def _three(x: float) -> str:
    """Three significant digits, no exponent: 1.23, 12.3, 123, 1234."""
    size = abs(x)
    if size >= 100:
        return f"{x:.0f}"
    if size >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"
