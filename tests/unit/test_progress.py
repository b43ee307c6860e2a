"""Progress output for logs (no terminal): timestamped lines, a start line per item."""

from __future__ import annotations

import io
import re

from lab.core.progress import Progress, stamp

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] ")


def test_plain_lines_are_timestamped():
    out = io.StringIO()
    progress = Progress(stream=out)
    with progress.step("Booting L1") as step:
        step.update("some detail")
    with progress.bar("thp on lab", 2) as bar:
        for name in ("a", "b"):
            bar.start(name)
            bar.advance()
    lines = out.getvalue().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    texts = [LINE.sub("", line) for line in lines]
    assert texts[:2] == ["Booting L1 ...", "Booting L1: some detail"]
    assert texts[2].startswith("Booting L1: done (")
    assert texts[3:5] == ["thp on lab: 1/2 a ...", "thp on lab: 2/2 b ..."]
    assert texts[5].startswith("thp on lab: 2/2 done (") and len(texts) == 6


def test_quiet_prints_nothing():
    out = io.StringIO()
    progress = Progress(quiet=True, stream=out)
    with progress.bar("x", 1) as bar:
        bar.start("a")
        bar.advance()
    assert out.getvalue() == ""


def test_result_lines_are_stamped_in_logs(capsys):
    assert LINE.match(stamp("[1/2] PASS a"))  # pytest's stdout is not a terminal
