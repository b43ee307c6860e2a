"""Every crash pattern is proven by a sample log (tests/data/crash, titles in expected.yaml)."""

from pathlib import Path

import pytest
import yaml

from lab.analysis.crash import PATTERNS, scan

DATA = Path(__file__).parent.parent / "data" / "crash"
EXPECTED = yaml.safe_load((DATA / "expected.yaml").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_log_gives_its_titles(name):
    crashes = scan((DATA / name).read_text())
    assert [c.title for c in crashes] == EXPECTED[name]


def test_every_pattern_has_a_sample():
    hit = {c.pattern for name in EXPECTED for c in scan((DATA / name).read_text())}
    # warning-other (a WARNING: line of no known form) is covered by a test below.
    assert hit >= {p.name for p in PATTERNS} - {"warning-other"}


def test_every_sample_file_is_listed():
    assert {p.name for p in DATA.glob("*.log")} == set(EXPECTED)


def test_excerpt_runs_to_the_end_marker_and_keeps_the_oops():
    crash = scan((DATA / "oops-null.log").read_text())[0]
    assert crash.excerpt.splitlines()[0].endswith("at virtual address 0000000000000008")
    assert "Internal error: Oops" in crash.excerpt
    assert crash.excerpt.splitlines()[-1].endswith("---[ end trace 0000000000000000 ]---")


def test_two_reports_in_one_log_are_two_crashes():
    text = (DATA / "warning.log").read_text() + (DATA / "hung-task.log").read_text()
    assert [c.pattern for c in scan(text)] == ["warning", "hung-task"]


def test_lines_without_a_timestamp_and_with_carriage_returns():
    assert scan("BUG: unable to handle page fault\r\n")[0].title == "BUG: unable to handle page fault"


def test_a_warning_of_another_form():
    assert scan("[ 1.0] WARNING: at some/file.c:12 something odd")[0].pattern == "warning-other"


def test_the_panic_an_oops_ends_in_belongs_to_it():
    crashes = scan((DATA / "kernel-bug.log").read_text())
    assert len(crashes) == 1
    assert "Kernel panic - not syncing: Oops - BUG: Fatal exception" in crashes[0].excerpt
