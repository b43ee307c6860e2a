"""A KVM selftest's outcome, from its exit status and its output.

The selftests speak in two ways (tools/testing/selftests/kselftest.h):
- The exit status: 0 pass (KSFT_PASS), 4 skip (KSFT_SKIP), anything else fail. A failed
  TEST_ASSERT prints "==== Test Assertion Failure ====" and exits 254 (lib/assert.c), or
  4 when the cause was a missing feature (__TEST_REQUIRE, "... - skipping test").
- Some also print TAP/KTAP (Documentation/dev-tools/ktap.rst): "TAP version 13" or
  "KTAP version 1", a plan "1..N", then "ok N name" / "not ok N name", with "# SKIP
  reason" as a directive; "Bail out!" ends the run early. Nested KTAP subtests are
  indented; only the top level is judged here.

A test that refuses its arguments (getopt's "invalid option -- 's'": an older tree's
test without an option the selection gives) did not run, whatever its exit status.
A test that is cut off (a signal, a timeout, a crash in the middle) leaves a plan with
fewer results than it promised: the cases it never reported are missing, and that fails
it even if the exit status was 0. A "not ok" without a SKIP or TODO directive fails it
too. Pure functions over text: lab/selftests/ runs the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lab.core.status import FAIL, PASS, SKIP, Status

KSFT_PASS, KSFT_FAIL, KSFT_SKIP = 0, 1, 4

_VERSION = re.compile(r"^(?:TAP|KTAP) version (\d+)\s*$")
_PLAN = re.compile(r"^1\.\.(\d+)\b")
_RESULT = re.compile(r"^(not ok|ok)\s+(\d+)\s*(?:-\s*)?([^#]*?)\s*(?:#\s*(.*))?$")
_DIRECTIVE = re.compile(r"^(SKIP|TODO|XFAIL)\b\s*(.*)$", re.I)
_BAIL = re.compile(r"^Bail out!\s*(.*)$")
_TOTALS = re.compile(r"^# Totals: pass:(\d+) fail:(\d+) xfail:(\d+) xpass:(\d+) skip:(\d+) error:(\d+)")
_ASSERT = re.compile(r"^==== Test Assertion Failure ====")
#: getopt refusing an argument: the test printed its usage and did not run (some older
#: tests then exit 0, or 4)
_REFUSED = re.compile(r"(?:invalid option|unrecognized option|option requires an argument) -- .*$", re.M)
#: What a test prints when it skips for a missing feature (__TEST_REQUIRE, ksft_exit_skip).
_SKIP_LINE = re.compile(r"(?:^|\s)(?:skipping test|SKIP)\b[:\s-]*(.*)$", re.I)
SIGNALS = {1: "SIGHUP", 2: "SIGINT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE",
           9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM"}


@dataclass(frozen=True)
class Case:
    number: int
    name: str
    ok: bool
    directive: str = ""  # "SKIP", "TODO", "XFAIL" or ""
    reason: str = ""

    @property
    def status(self) -> Status:
        if self.directive == "SKIP":
            return SKIP
        if self.ok or self.directive in ("TODO", "XFAIL"):
            return PASS
        return FAIL


@dataclass
class Tap:
    """The top level of a TAP/KTAP stream, as far as it went."""

    version: str = ""
    plan: int | None = None
    cases: list[Case] = field(default_factory=list)
    bail_out: str | None = None
    #: the kselftest "# Totals:" line, when printed: pass, fail, xfail, xpass, skip, error
    totals: tuple[int, ...] | None = None
    #: lines of a failed TEST_ASSERT block (its first lines: file, line, the condition)
    assertion: list[str] = field(default_factory=list)

    @property
    def is_tap(self) -> bool:
        return bool(self.version or self.plan is not None or self.cases)

    @property
    def missing(self) -> int:
        """Cases the plan promised that never reported (cut off in the middle)."""
        if self.plan is None:
            return 0
        return max(0, self.plan - len(self.cases))


def parse(text: str) -> Tap:
    """The top-level TAP of `text` (indented lines are nested subtests, not judged)."""
    tap = Tap()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        i += 1
        if raw[:1] in (" ", "\t"):
            continue  # a nested KTAP subtest's line
        line = raw.rstrip()
        if _ASSERT.match(line) and not tap.assertion:
            # its file:line and condition, then "pid=... errno=..." and the message; the
            # library's attempt at a backtrace (addr2line, absent in L1) is noise
            tap.assertion = [s.strip() for s in lines[i:i + 6] if s.strip() and "addr2line" not in s][:4]
            continue
        m = _VERSION.match(line)
        if m:
            tap.version = tap.version or line.split()[0] + " " + m.group(1)
            continue
        m = _PLAN.match(line)
        if m and tap.plan is None:
            tap.plan = int(m.group(1))
            continue
        m = _RESULT.match(line)
        if m:
            directive, reason = "", ""
            if m.group(4):
                d = _DIRECTIVE.match(m.group(4).strip())
                if d:
                    directive, reason = d.group(1).upper(), d.group(2).strip()
            tap.cases.append(Case(int(m.group(2)), m.group(3).strip(), m.group(1) == "ok", directive, reason))
            continue
        m = _BAIL.match(line)
        if m:
            tap.bail_out = m.group(1).strip() or "(no reason given)"
            continue
        m = _TOTALS.match(line)
        if m:
            tap.totals = tuple(int(g) for g in m.groups())
    return tap


@dataclass(frozen=True)
class Outcome:
    status: Status
    #: one line: why (exit status, the failing case, the assertion, the skip reason)
    reason: str
    tap: Tap


def judge(output: str, exit_code: int | None, signal: int | None = None, timeout: float | None = None) -> Outcome:
    """pass, skip or fail for one run of one selftest: the exit status says it, unless
    its TAP says otherwise (a "not ok", cases missing from the plan, a bail-out)."""
    tap = parse(output)
    if timeout is not None:
        done = f", {len(tap.cases)} of {tap.plan} cases reported" if tap.plan is not None else ""
        return Outcome(FAIL, f"ran past its timeout of {timeout:g} s and was killed{done}", tap)
    if signal:
        name = SIGNALS.get(signal, f"signal {signal}")
        return Outcome(FAIL, f"killed by {name}{_after(tap)}", tap)
    if exit_code is None:
        return Outcome(FAIL, "no exit status (the runner in L1 lost it)", tap)
    failed = [c for c in tap.cases if c.status == FAIL]
    refused = _REFUSED.search(output) if not tap.cases else None
    if refused:
        return Outcome(FAIL, f"it refused its arguments ({refused.group(0).strip()}) and did not run "
                             f"(exit {exit_code})", tap)
    if tap.bail_out is not None:
        return Outcome(FAIL, f"bailed out: {tap.bail_out}", tap)
    if exit_code == KSFT_SKIP:
        return Outcome(SKIP, _skip_reason(output, tap), tap)
    if exit_code != KSFT_PASS:
        return Outcome(FAIL, _fail_reason(exit_code, tap, failed), tap)
    if failed:
        return Outcome(FAIL, f"exit 0, but {_cases(failed)} not ok", tap)
    if tap.missing:
        return Outcome(FAIL, f"exit 0, but only {len(tap.cases)} of the {tap.plan} planned cases reported", tap)
    if tap.cases and all(c.status == SKIP for c in tap.cases):
        return Outcome(SKIP, "every case skipped: " + (tap.cases[0].reason or "no reason given"), tap)
    skipped = sum(c.status == SKIP for c in tap.cases)
    cases = f": {len(tap.cases) - skipped} cases ok" + (f", {skipped} skipped" if skipped else "") if tap.cases else ""
    return Outcome(PASS, f"exit 0{cases}", tap)


def _after(tap: Tap) -> str:
    if tap.plan is not None:
        return f" after {len(tap.cases)} of {tap.plan} cases"
    if tap.cases:
        return f" after case {tap.cases[-1].number} ({tap.cases[-1].name})"
    return ""


def _cases(cases: list[Case]) -> str:
    names = ", ".join(f"{c.number} ({c.name})" if c.name else str(c.number) for c in cases[:3])
    more = f" and {len(cases) - 3} more" if len(cases) > 3 else ""
    return f"case{'s' if len(cases) > 1 else ''} {names}{more}"


def _fail_reason(exit_code: int, tap: Tap, failed: list[Case]) -> str:
    text = f"exit {exit_code}"
    if failed:
        text += f": {_cases(failed)} not ok"
        if failed[0].reason:
            text += f" ({failed[0].reason})"
    elif tap.missing:
        text += f" after {len(tap.cases)} of {tap.plan} cases"
    if tap.assertion:
        text += ": " + " | ".join(tap.assertion[:3])
    return text


def _skip_reason(output: str, tap: Tap) -> str:
    skipped = [c for c in tap.cases if c.status == SKIP and c.reason]
    if skipped:
        return skipped[-1].reason
    for line in reversed(output.splitlines()):
        m = _SKIP_LINE.search(line)
        if m:
            return line.strip()[:200]
    lines = [s.strip() for s in output.splitlines() if s.strip()]
    return (lines[-1][:200] if lines else "exit 4 (KSFT_SKIP), no reason printed")
