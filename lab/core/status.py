"""The outcomes a scenario (or a selftest, a matrix cell) can have."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """A str, so it compares equal to (and serialises as) its value in results files."""

    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    SKIP = "skip"
    #: `kvmlab test --count N`: passed in some of the N runs, not all (fails the run)
    FLAKY = "flaky"
    #: `kvmlab selftests`: failed as the kernel's known-results file says, for a cause the
    #: run checked (reported, not a failure of the run)
    XFAIL = "xfail"
    #: the scenario does not apply to this kernel: its `kernels:` condition, or a feature
    #: the kernel lacks (mTHP, MADV_COLLAPSE...). Counted apart from skips, which are for
    #: a lab that lacked a resource (memory, a KVM mode) the scenario needs.
    NA = "n/a"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


PASS, FAIL, ERROR, SKIP, FLAKY, XFAIL, NA = (Status.PASS, Status.FAIL, Status.ERROR, Status.SKIP, Status.FLAKY,
                                            Status.XFAIL, Status.NA)
#: What fails a run.
BAD = (FAIL, FLAKY, ERROR)


def count(statuses: list[str]) -> dict[str, int]:
    """pass/fail/error/skip counts, and flaky only where `--count` found any (so a run
    without it reads as every run before --count did)."""
    counts = {k.value: statuses.count(k) for k in (PASS, FAIL, ERROR, SKIP)}
    for extra in (FLAKY, XFAIL, NA):
        if extra in statuses:
            counts[extra.value] = statuses.count(extra)
    return counts
#: No measurement to compare: a kernel that skipped or errored says nothing about a change.
NOT_MEASURED = (SKIP, ERROR, NA)
