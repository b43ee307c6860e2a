"""L1's ring-buffer sizing between scenarios (images/l1/python/l1/tracefs.py, standard
library only, so the host imports it as L1 does)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "images/l1/python"))

from l1.tracefs import KEEP_KB, buffer_for  # noqa: E402


@pytest.mark.parametrize("current, need, size", [
    (1408, 1706, 1706),          # the boot size, grown
    (4010, 1706, 4010),          # a smaller need keeps the buffer: no resize
    (4010, 4010, 4010),
    (KEEP_KB, 2474, KEEP_KB),
    (2474, 154538, 154538),      # a big one, for its scenario alone
    (154538, 1706, 1706),        # ... given back by the next
    (154538, 81920, 81920),
    # buffer_size_kb reads back rounded up to whole pages: the same size, not resized
    (KEEP_KB + 3, 2474, KEEP_KB + 3),
    (KEEP_KB + 3, KEEP_KB, KEEP_KB + 3),
    (37503, 37500, 37503),
    (1709, 1706, 1709),
])
def test_small_buffers_only_grow_and_big_ones_are_given_back(current, need, size):
    assert buffer_for(current, need) == size


STATS = ("entries: {e}\noverrun: 0\ncommit overrun: 0\nbytes: 0\noldest event ts:     0.000000\n"
         "now ts:   120.415120\ndropped events: {d}\nread events: {r}\n")


@pytest.mark.parametrize("cpus, fresh", [
    ([(0, 0, 0), (0, 0, 0)], True),      # as a clear left them: the next capture skips its own clear
    ([(0, 0, 0), (0, 0, 4247)], False),  # drained but not cleared: read events counted
    ([(12, 0, 0), (0, 0, 0)], False),    # events left in a buffer
    ([(0, 3, 0), (0, 0, 0)], False),     # events dropped since the last clear
])
def test_a_buffer_counts_as_fresh_only_as_a_clear_leaves_it(tmp_path, monkeypatch, cpus, fresh):
    from l1 import tracefs

    for cpu, (e, d, r) in enumerate(cpus):
        (tmp_path / f"per_cpu/cpu{cpu}").mkdir(parents=True)
        (tmp_path / f"per_cpu/cpu{cpu}/stats").write_text(STATS.format(e=e, d=d, r=r))
    monkeypatch.setattr(tracefs, "TRACING", str(tmp_path))
    assert tracefs.fresh() is fresh
