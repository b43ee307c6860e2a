"""docs/stage2-sizing.md maps KVM's sizing decisions to scenarios: every scenario it names
exists, and every scenario of the thp, nested and granule-16k suites is named (a new scenario gets its
decision written down, a renamed one its reference mended)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "stage2-sizing.md"
SUITES = ROOT / "configs" / "suites"
#: `suite/name` in backticks
NAMED = re.compile(r"`([a-z0-9-]+)/([a-z0-9-]+)`")


def named() -> set[tuple[str, str]]:
    return {m.groups() for m in NAMED.finditer(DOC.read_text())
            if (SUITES / m.group(1)).is_dir()}


def test_every_scenario_the_document_names_exists():
    missing = sorted(f"{suite}/{name}" for suite, name in named() if not (SUITES / suite / f"{name}.yaml").is_file())
    assert not missing, f"docs/stage2-sizing.md names scenarios that do not exist: {missing}"


def test_every_thp_and_nested_scenario_is_named():
    have = named()
    for suite in ("thp", "nested", "granule-16k"):
        absent = sorted(p.stem for p in (SUITES / suite).glob("*.yaml") if (suite, p.stem) not in have)
        assert not absent, f"docs/stage2-sizing.md does not say which decision these {suite} scenarios check: {absent}"


def test_the_document_names_scenarios_at_all():
    # the pattern must keep matching the document's way of naming them
    assert len(named()) >= 40
