"""One scenario's outcome as the summary and the reports hold it, and the outcome of a
scenario run N times (`kvmlab test --count N`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lab.core.status import ERROR, FAIL, FLAKY, NA, PASS, SKIP


@dataclass
class ScenarioResult:
    name: str
    description: str
    expected: str
    status: str
    observed: str = ""
    faults: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    artefacts: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    source: str = ""  # the scenario file, for reports (JUnit's file attribute)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def counted(runs: list[ScenarioResult], artefacts: str) -> ScenarioResult:
    """N runs of one scenario as one result: PASS only if every run passed, FLAKY if some
    did and some did not (a failure of the run: nothing is retried silently), else the
    worst of them; the reasons say how many passed and how each other run went."""
    first = runs[0]
    statuses = [r.status for r in runs]
    passed = statuses.count(PASS)
    if passed == len(runs) or statuses.count(SKIP) == len(runs) or statuses.count(NA) == len(runs):
        status = statuses[0]
    elif passed:
        status = FLAKY
    else:
        status = ERROR if ERROR in statuses else FAIL if FAIL in statuses else SKIP
    others = [f"run {i + 1}: {r.status.upper()}" + (f" {r.reasons[0]}" if r.reasons else "")
              for i, r in enumerate(runs) if r.status != PASS]
    observed = sorted({r.observed for r in runs if r.observed})
    return ScenarioResult(
        first.name.rsplit("/", 1)[0], first.description, first.expected, status,
        observed=" | ".join(observed), faults=first.faults, counts=first.counts,
        seconds=round(sum(r.seconds for r in runs), 2),
        reasons=[f"passed {passed} of {len(runs)} runs"] + others[:5] + (first.reasons if status == PASS else []),
        checks=first.checks, artefacts=artefacts,
        timings={"runs": len(runs), "passed": passed}, source=first.source)
