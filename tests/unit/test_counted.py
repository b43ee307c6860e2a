"""`kvmlab test --count N`: N runs of a scenario judged as one (lab/scenarios/result.py)."""

import pytest

from lab.core.status import ERROR, FAIL, FLAKY, PASS, SKIP
from lab.scenarios.result import ScenarioResult, counted


def run(i: int, status: str, observed: str = "32 block (1 fault each)", reason: str = "") -> ScenarioResult:
    return ScenarioResult(f"anon-thp-always/run-{i}", "d", "block", status, observed=observed, seconds=10.0,
                          reasons=[reason] if reason else [])


@pytest.mark.parametrize("statuses, expected", [
    ([PASS, PASS, PASS], PASS),
    ([PASS, FAIL, PASS], FLAKY),
    ([PASS, ERROR], FLAKY),
    ([FAIL, FAIL], FAIL),
    ([FAIL, ERROR], ERROR),
    ([SKIP, SKIP], SKIP),
])
def test_n_runs_are_one_verdict_and_flaky_is_a_failure_of_its_own(statuses, expected):
    out = counted([run(i + 1, s, reason=f"why {i + 1}") for i, s in enumerate(statuses)], "results/anon-thp-always")
    assert out.status == expected and out.name == "anon-thp-always"
    assert out.reasons[0] == f"passed {statuses.count(PASS)} of {len(statuses)} runs"
    bad = [f"run {i + 1}: {s.upper()} why {i + 1}" for i, s in enumerate(statuses) if s != PASS]
    assert out.reasons[1:1 + len(bad)] == bad
    assert out.seconds == 10.0 * len(statuses) and out.artefacts == "results/anon-thp-always"


def test_differing_observations_are_all_shown():
    out = counted([run(1, PASS), run(2, FAIL, "31 block (1 fault each), 1 split (513 faults each)")], "r")
    assert out.status == FLAKY
    assert out.observed == "31 block (1 fault each), 1 split (513 faults each) | 32 block (1 fault each)"
