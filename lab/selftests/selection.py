"""What `kvmlab selftests` runs, and what it expects: data, checked like scenario files.

configs/selftests/kvm.yaml, the selection: each test's arguments (sized for L1's memory
and TCG's speed), its timeout, whether it takes a backing (`-s`), huge pages it needs for
a hugetlb backing, where its guest memory is (to judge the trace over), and the expected
stage-2 mapping of that memory per backing, reasoned from the test's code.

configs/selftests/known/KERNEL.yaml, the known results of one Debian kernel in this lab:
every test that does not pass, and the cause, which the run checks in L1 (a CPU feature
absent from /proc/cpuinfo, a config option off in the kernel's config, memory L1 lacks,
or, for a finding in the kernel or the emulation, the failure's own line in its output).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.analysis import mapping
from lab.core import validate as v
from lab.core.errors import UserError
from lab.core.paths import CONFIGS_DIR

SELECTION = CONFIGS_DIR / "selftests" / "kvm.yaml"
KNOWN_DIR = CONFIGS_DIR / "selftests" / "known"
#: The backing types of tools/testing/selftests/kvm/lib/test_util.c that make sense here.
BACKINGS = ("anonymous", "anonymous_thp", "anonymous_hugetlb_2mb", "anonymous_hugetlb_1gb", "anonymous_hugetlb_64kb",
            "anonymous_hugetlb_32mb", "shmem", "shared_hugetlb", "anonymous_hugetlb")
#: Huge page size (KiB) each hugetlb backing takes its pages from.
HUGE_KB = {"anonymous_hugetlb_2mb": 2048, "anonymous_hugetlb_1gb": 1048576, "anonymous_hugetlb_64kb": 64,
           "anonymous_hugetlb_32mb": 32768, "shared_hugetlb": 2048, "anonymous_hugetlb": 2048}
#: How a test says where its guest memory is (lab/selftests/run.py reads it from the output).
MEMORY = ("memstress", "page_table", "none")
MAPPINGS = (mapping.BLOCK, mapping.PAGES, mapping.SPLIT, mapping.BLOCK_1G)
STATUSES = ("pass", "skip", "fail")
CAUSES = ("kconfig", "cpu_lacks", "memory", "output")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_CONFIG = re.compile(r"^CONFIG_[A-Z0-9_]+$")
_FEATURE = re.compile(r"^[a-z0-9]+$")
FIX = "fix the selftests file"


@dataclass(frozen=True)
class Test:
    name: str
    args: list[str] = field(default_factory=list)
    timeout: float = 60.0
    #: takes `-s BACKING`: run once per backing asked for
    backing: bool = False
    #: 2 MiB huge pages to reserve for a hugetlb backing
    hugepages: int = 0
    memory: str = "none"
    #: backing -> expected mapping of the test's memory ("" for a test without backings)
    expect: dict[str, str] = field(default_factory=dict)
    default: bool = True
    why: str = ""
    #: the trace buffer per L1 CPU with --trace
    trace_kb: int = 8192

    def argv(self, backing: str | None) -> list[str]:
        return self.args + (["-s", backing] if backing else [])


@dataclass(frozen=True)
class Selection:
    path: Path
    backings: list[str]
    tests: dict[str, Test]


@dataclass(frozen=True)
class Cause:
    kind: str  # kconfig, cpu_lacks, memory, output
    value: str
    why: str = ""

    def describe(self) -> str:
        what = {"kconfig": f"{self.value} is off in the kernel's config",
                "cpu_lacks": f"L1's CPU lacks {self.value} (/proc/cpuinfo)",
                "memory": f"L1 has less than {self.value} MiB of memory",
                "output": f"its output (or its verdict) says {self.value!r}"}[self.kind]
        return what + (f" ({self.why})" if self.why else "")


@dataclass(frozen=True)
class Known:
    """One test's known result on one kernel (per backing, when it has one)."""
    status: str
    cause: Cause | None = None
    backing: str | None = None


@dataclass
class KnownResults:
    path: Path | None
    kernel: str
    tests: dict[str, list[Known]] = field(default_factory=dict)

    def of(self, test: str, backing: str | None) -> Known:
        for known in self.tests.get(test, []):
            if known.backing in (None, backing):
                return known
        return Known("pass")


def load_selection(path: Path = SELECTION) -> Selection:
    data = v.read_yaml(path, "no such selftests file", FIX)
    c = v.Checker(str(path), FIX)
    top = c.mapping("", data, ("backings", "tests"))
    backings = c.get(top, "backings", "backings", _backing_list, ["anonymous"])
    raw = c.mapping("tests", top.get("tests"), tuple(top.get("tests") or ()))
    if not raw:
        raise UserError(f"{path}: tests: no tests listed; {FIX}")
    tests = {}
    keys = ("args", "timeout", "backing", "hugepages", "memory", "expect", "default", "why", "trace_kb")
    for name, spec in raw.items():
        if not isinstance(name, str) or not _NAME.match(name):
            c.fail("tests", name, "a test's name (letters, digits, _ . -), e.g. demand_paging_test")
        spec = c.mapping(f"tests.{name}", spec, keys)
        at = f"tests.{name}"
        expect = c.mapping(f"{at}.expect", spec.get("expect"), BACKINGS)
        for backing, mapped in expect.items():
            if mapped not in MAPPINGS:
                c.fail(f"{at}.expect.{backing}", mapped, "one of " + ", ".join(MAPPINGS))
        test = Test(name, args=c.get(spec, "args", f"{at}.args", _args, []),
                    timeout=c.get(spec, "timeout", f"{at}.timeout", v.seconds(1, 3600), 60.0),
                    backing=c.get(spec, "backing", f"{at}.backing", v.boolean, False),
                    hugepages=c.get(spec, "hugepages", f"{at}.hugepages", v.integer(0, 4096), 0),
                    memory=c.get(spec, "memory", f"{at}.memory", v.choice(MEMORY), "none"),
                    expect={str(k): str(m) for k, m in expect.items()},
                    default=c.get(spec, "default", f"{at}.default", v.boolean, True),
                    why=c.get(spec, "why", f"{at}.why", v.text(), ""),
                    trace_kb=c.get(spec, "trace_kb", f"{at}.trace_kb", v.integer(256, 262144), 8192))
        if test.expect and test.memory == "none":
            c.fail(f"{at}.memory", "none", "memstress or page_table with expect: (where the test's memory is)")
        if test.expect and not test.backing:
            c.fail(f"{at}.backing", False, "true with expect: (expectations are per backing)")
        tests[name] = test
    return Selection(path, backings, tests)


def _backing_list(value: Any) -> list[str]:
    items = v.text_list(value)
    for item in items:
        if item not in BACKINGS:
            raise v.Bad("backing types of the selftests: " + ", ".join(BACKINGS))
    return items


def _args(value: Any) -> list[str]:
    if not isinstance(value, str):
        raise v.Bad("the test's arguments as one string, e.g. '-b 64M'")
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise v.Bad(f"arguments a shell would split ({exc})") from None


def known_path(kernel_label: str) -> Path:
    return KNOWN_DIR / f"{kernel_label}.yaml"


def load_known(kernel_label: str, path: Path | None = None) -> KnownResults:
    """The known results of a kernel (configs/selftests/known/LABEL.yaml, or its suite's);
    none when there is no file (every test is then expected to pass)."""
    if path is None:
        # a pinned Debian kernel ("sid-7.2.13-1") takes its suite's file when it has none
        found = [p for p in (known_path(kernel_label), known_path(kernel_label.split("-")[0])) if p.is_file()]
        if not found:
            return KnownResults(None, kernel_label)
        path = found[0]
    data = v.read_yaml(path, "no such known-results file", FIX)
    c = v.Checker(str(path), FIX)
    top = c.mapping("", data, ("kernel", "tests"))
    out = KnownResults(path, c.get(top, "kernel", "kernel", v.text(), kernel_label))
    raw = c.mapping("tests", top.get("tests"), tuple(top.get("tests") or ()))
    for name, entries in raw.items():
        for i, spec in enumerate(entries if isinstance(entries, list) else [entries]):
            at = f"tests.{name}" + (f"[{i}]" if isinstance(entries, list) else "")
            spec = c.mapping(at, spec, ("status", "cause", "backing", "why"))
            status = c.get(spec, "status", f"{at}.status", v.choice(STATUSES), None)
            if status is None:
                c.fail(f"{at}.status", None, "one of " + ", ".join(STATUSES))
            backing = c.get(spec, "backing", f"{at}.backing", v.choice(BACKINGS), None)
            cause = _cause(c, at, spec.get("cause"), c.get(spec, "why", f"{at}.why", v.text(), ""))
            if status != "pass" and cause is None:
                c.fail(f"{at}.cause", None, f"a cause for a test that does not pass: one of {', '.join(CAUSES)}")
            out.tests.setdefault(str(name), []).append(Known(status, cause, backing))
    return out


def _cause(c: v.Checker, at: str, raw: Any, why: str) -> Cause | None:
    spec = c.mapping(f"{at}.cause", raw, CAUSES)
    if not spec:
        return None
    if len(spec) != 1:
        c.fail(f"{at}.cause", raw, "one cause (one of " + ", ".join(CAUSES) + ")")
    kind, value = next(iter(spec.items()))
    checks = {"kconfig": v.text(_CONFIG, "a config option, e.g. CONFIG_IDLE_PAGE_TRACKING"),
              "cpu_lacks": v.text(_FEATURE, "a /proc/cpuinfo feature, e.g. sve2"),
              "memory": lambda x: str(v.size_mib(x)),
              "output": _regex}
    return Cause(kind, c.get(spec, kind, f"{at}.cause.{kind}", checks[kind]), why)


def _regex(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise v.Bad("a regular expression one line of the test's output matches")
    try:
        re.compile(value)
    except re.error as exc:
        raise v.Bad(f"a valid regular expression ({exc})") from None
    return value
