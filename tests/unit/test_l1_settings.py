"""When L1's page cache is dropped before a scenario (images/l1/python/l1/scenario.py):
only when little memory is free, or for huge page reservations."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images/l1/python"))

from l1.scenario import must_drop_caches  # noqa: E402
from lab.shared.contract import L1Settings  # noqa: E402

GIB = 1 << 20  # KiB


@pytest.mark.parametrize("hugepages, free_kb, dropped", [
    ({}, 1.8 * GIB, False),               # a 3 GiB L1 between scenarios: QEMU stays cached
    ({}, 1.4 * GIB, True),                # under half free
    ({"1048576": 1}, 2.5 * GIB, True),    # a GiB page needs a contiguous GiB
    ({"2048": 16}, 2.5 * GIB, True),
])
def test_caches_are_dropped_only_when_memory_is_short_or_huge_pages_are_reserved(hugepages, free_kb, dropped):
    info = {"MemTotal": 3 * GIB, "MemFree": int(free_kb)}
    assert must_drop_caches(L1Settings(hugepages=hugepages), info) is dropped


def test_an_unreadable_meminfo_drops():
    assert must_drop_caches(L1Settings(), {}) is True
