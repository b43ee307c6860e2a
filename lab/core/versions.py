"""Version conditions on kernels and QEMU: '>=5.15', '<9.0', '>=6.1,<6.12'."""

from __future__ import annotations

import re

_TERM = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+){0,2})\s*$")


def version_tuple(text: str) -> tuple[int, ...]:
    """'6.12.57+deb13-arm64' -> (6, 12, 57); no leading number -> (0,)."""
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if not m:
        return (0,)
    return tuple(int(g or 0) for g in m.groups())


def is_condition(spec: object) -> bool:
    return isinstance(spec, str) and bool(spec.strip()) and all(_TERM.match(term) for term in spec.split(","))


def versions_match(spec: str | None, release: str) -> bool:
    """Whether `release` meets every term of `spec` (None or empty: always). A term compares
    only as many parts as it gives: '<5.15' holds for 5.10.x and not for 5.15.x."""
    if not spec:
        return True
    have = version_tuple(release)
    for term in spec.split(","):
        m = _TERM.match(term)
        if m is None:
            raise ValueError(f"not a version condition: {term!r}")
        op, ver = m.groups()
        want = version_tuple(ver)
        cmp = (have[:len(want)] > want) - (have[:len(want)] < want)
        if not {">=": cmp >= 0, "<=": cmp <= 0, "==": cmp == 0, "!=": cmp != 0, ">": cmp > 0, "<": cmp < 0}[op]:
            return False
    return True
