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
