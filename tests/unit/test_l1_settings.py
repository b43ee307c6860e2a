"""When L1's page cache is dropped before a scenario (images/l1/python/l1/scenario.py):
only when little memory is free, or when a huge page reservation falls short without."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images/l1/python"))

from l1 import scenario  # noqa: E402
from l1.scenario import Settings, must_drop_caches  # noqa: E402

GIB = 1 << 20  # KiB
NR = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


@pytest.mark.parametrize("free_kb, dropped", [
    (1.8 * GIB, False),  # a 3 GiB L1 between scenarios: QEMU stays cached
    (1.4 * GIB, True),   # under half free
])
def test_caches_are_dropped_before_a_scenario_only_when_memory_is_short(free_kb, dropped):
    assert must_drop_caches({"MemTotal": 3 * GIB, "MemFree": int(free_kb)}) is dropped


def test_an_unreadable_meminfo_drops():
    assert must_drop_caches({}) is True


class FakeL1:
    """L1's settings files as a dict: nr_hugepages grants at most `room` pages until the
    page cache is dropped, then all."""

    def __init__(self, room: int):
        self.files = {NR: "0", "/proc/sys/vm/drop_caches": "0", "/proc/sys/vm/compact_memory": "0"}
        self.room, self.writes = room, []

    def read(self, path: str) -> str:
        return self.files[path]

    def write(self, path: str, value: str) -> None:
        self.writes.append((path, value))
        if path == NR:
            value = str(min(int(value), self.room))
        elif path == "/proc/sys/vm/drop_caches":
            self.room = 1 << 30
        self.files[path] = value


@pytest.mark.parametrize("room, before, got, dropped, drops", [
    (64, False, 16, False, 0),  # enough room: the page cache (QEMU's files) stays
    (8, False, 16, True, 1),    # short: dropped, compacted, asked again
    (8, True, 8, True, 0),      # dropped before the scenario already (memory short): asked once
])
def test_a_short_huge_page_reservation_drops_the_page_cache_and_asks_again(monkeypatch, room, before, got, dropped,
                                                                            drops):
    l1 = FakeL1(room)
    monkeypatch.setattr(scenario, "read_setting", l1.read)
    monkeypatch.setattr(scenario, "write_setting", l1.write)
    monkeypatch.setattr(scenario.os.path, "exists", lambda path: path in l1.files)
    settings = Settings()
    assert scenario.reserve_hugepages(NR, 16, settings, dropped=before) == (got, dropped)
    assert [w[0] for w in l1.writes].count("/proc/sys/vm/drop_caches") == drops
    settings.restore()
    assert l1.files[NR] == "0"  # the reservation given back, whatever it took


WARM_HOLDS = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("clearing", flush=True)
time.sleep(0.5)
open(sys.argv[2], "w").write("freed")
"""

WARM_TRIES = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("cleared")
except OSError:
    print("skipped")
"""


def test_a_scenario_that_maps_the_1g_page_waits_for_l1s_warm_up_to_free_it(tmp_path, monkeypatch):
    """images/l1/rootfs/kvmlab/hugepage-warm clears the 1 GiB page once under this lock: a scenario
    that maps the page waits until it is free again, and while such a scenario runs the
    warm-up leaves the page alone."""
    import subprocess

    monkeypatch.setattr(scenario, "_HUGE_PAGE_HELD", [])
    lock, freed = tmp_path / "huge-1g.lock", tmp_path / "freed"
    warm = subprocess.Popen([sys.executable, "-c", WARM_HOLDS, str(lock), str(freed)], stdout=subprocess.PIPE, text=True)
    try:
        assert warm.stdout.readline() == "clearing\n"
        scenario.hold_huge_page(str(lock))
        assert freed.read_text() == "freed"  # it returned only once the warm-up had let go
        tried = subprocess.run([sys.executable, "-c", WARM_TRIES, str(lock)], capture_output=True, text=True)
        assert tried.stdout == "skipped\n"
    finally:
        warm.wait()
        for fd in scenario._HUGE_PAGE_HELD:
            os.close(fd)
    tried = subprocess.run([sys.executable, "-c", WARM_TRIES, str(lock)], capture_output=True, text=True)
    assert tried.stdout == "cleared\n"  # no scenario holds it: the warm-up clears the page
