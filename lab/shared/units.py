"""Byte units, and sizes written for people (4K, 2M, 1G)."""

from __future__ import annotations

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
#: The suffixes sizes are written with, largest first.
UNITS = (("T", TiB), ("G", GiB), ("M", MiB), ("K", KiB))
PAGE = 4 * KiB


def short_size(n: int) -> str:
    """2097152 -> '2M', 4096 -> '4K', 1000 -> '1000': the largest unit that divides it."""
    for unit, scale in UNITS:
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def human_size(n: int) -> str:
    """2097152 -> '2 MiB', 4096 -> '4 KiB', 1000 -> '1000 bytes': for sentences."""
    for unit, scale in UNITS[1:]:
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}iB"
    return f"{n} bytes"
