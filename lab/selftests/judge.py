"""Judging one selftest run, as pure functions: whether a known cause holds in L1 (its
facts gathered by run.py), the status against the kernel's known result, and where the
test's guest memory is, from what it printed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lab.core.status import FAIL, PASS, XFAIL
from lab.selftests.selection import Known, KnownResults, Test

#: memstress (demand_paging_test, dirty_log_perf_test, ...): "guest physical test memory: [0x.., 0x..)"
_MEMSTRESS = re.compile(r"guest physical test memory: \[0x([0-9a-f]+), 0x([0-9a-f]+)\)", re.I)
#: memstress before 5.17 (perf_test_util): the start only
_OFFSET = re.compile(r"guest physical test memory offset: 0x([0-9a-f]+)", re.I)
#: kvm_page_table_test: the offset and the size, on two lines
_PT_OFFSET = re.compile(r"Guest physical test memory offset: 0x([0-9a-f]+)", re.I)
_PT_SIZE = re.compile(r"Testing memory size\(aligned\): 0x([0-9a-f]+)", re.I)



@dataclass
class L1Facts:
    """What the known causes are checked against."""
    features: set[str]
    mem_mib: int
    config: dict[str, str]
    config_source: str


def cause_holds(known: Known, facts: L1Facts, output: str) -> tuple[bool, str]:
    """(is the known cause true in this L1, what was found)."""
    cause = known.cause
    assert cause is not None
    if cause.kind == "kconfig":
        if not facts.config_source:
            return False, f"no config of L1's kernel to check {cause.value} in"
        value = facts.config.get(cause.value, "n")
        return value in ("n", ""), f"{cause.value}={value} in {facts.config_source}"
    if cause.kind == "cpu_lacks":
        return cause.value not in facts.features, ("absent from" if cause.value not in facts.features
                                                   else "present in") + " /proc/cpuinfo's Features"
    if cause.kind == "memory":
        return facts.mem_mib < int(cause.value), f"L1 has {facts.mem_mib} MiB"
    found = next((line.strip() for line in output.splitlines() if re.search(cause.value, line)), None)
    return found is not None, f"output: {found!r}" if found else "no output line matches"


def memory_windows(test: Test, output: str) -> list[tuple[int, int]]:
    """[start, end) of the test's guest memory, as the test printed it: once per VM it made
    (a test run in every guest mode prints one per mode; VMs of the same IPA size reuse a
    range), distinct and in order."""
    found: set[tuple[int, int]] = set()
    if test.memory == "memstress":
        found = {(int(m.group(1), 16), int(m.group(2), 16)) for m in _MEMSTRESS.finditer(output)}
        size = _memstress_size(test.args)
        if not found and size:  # before 5.17 only the start is printed; the size is -b x -v
            found = {(int(m.group(1), 16), int(m.group(1), 16) + size) for m in _OFFSET.finditer(output)}
    elif test.memory == "page_table":
        offsets = [int(m.group(1), 16) for m in _PT_OFFSET.finditer(output)]
        sizes = [int(m.group(1), 16) for m in _PT_SIZE.finditer(output)]
        found = {(lo, lo + size) for lo, size in zip(offsets, sizes)}
    return sorted(found)


def _memstress_size(args: list[str]) -> int:
    """The test memory of a memstress test: -b (per vCPU, default 1 GiB) times -v (default 1)."""
    from lab.core.validate import Bad, parse_bytes

    values = dict(zip(args, args[1:]))
    try:
        per_vcpu = parse_bytes(values.get("-b", "1G"))
        return per_vcpu * int(values.get("-v", "1"))
    except (Bad, ValueError):
        return 0


def against_known(observed: str, known: Known, results: KnownResults, facts: L1Facts, output: str,
                  reasons: list[str]) -> str:
    """The run's status, judged against the kernel's known result for it (reasons grow):
    as known is PASS, SKIP or XFAIL (an expected failure, whose cause was checked); a
    known cause found untrue, a regression, or a known non-pass that now differs, FAIL."""
    label = results.kernel
    if known.cause is not None:
        holds, found = cause_holds(known, facts, output)
        if not holds:
            reasons.append(f"the known cause on {label} is untrue here: {known.cause.describe()}; found: {found}")
            return FAIL
        reasons.append(f"known to {known.status} on {label}: {known.cause.describe()}; checked: {found}")
    if observed == known.status:
        return XFAIL if observed == FAIL else observed
    if known.status == PASS:
        reasons.append(f"REGRESSION: known to pass on {label}")
    else:
        reasons.append(f"known to {known.status} on {label} ({results.path}), but it did {observed}: "
                       "the known-results file is out of date")
    return FAIL
