"""Kernel health: the L1 log lines a scenario produced, scanned against a table of crash
patterns (after syzkaller's pkg/report: a table, each entry proven by sample logs in
tests/data/crash/).

Patterns are tried in order on every line; the first that matches a line gives the title.
Specific forms (KASAN, lockdep, hung task, RCU stall, a panic whose reason quotes
"BUG:") come before the generic BUG: and WARNING: ones they would otherwise fall under.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Console lines carry "[  12.345678] " and maybe "[    T123] "/"[ C1] " prefixes.
_PREFIX = r"^(?:\[\s*\d+\.\d+\]\s*)?(?:\[\s*[TC]\d+\]\s*)?"


@dataclass(frozen=True)
class Pattern:
    name: str
    regex: re.Pattern[str]
    title: str  # str.format over the regex's groups


def _p(name: str, regex: str, title: str) -> Pattern:
    return Pattern(name, re.compile(_PREFIX + r".*?" + regex), title)


PATTERNS: list[Pattern] = [
    _p("kasan", r"BUG: KASAN: ([\w-]+) in ([\w.]+)", "KASAN: {0} in {1}"),
    _p("kfence", r"BUG: KFENCE: ([\w-]+)(?: read| write)? in ([\w.]+)", "KFENCE: {0} in {1}"),
    _p("ubsan", r"UBSAN: ([\w-]+(?: [\w-]+)*) in (\S+)", "UBSAN: {0} in {1}"),
    _p("lockdep", r"WARNING: (possible circular locking dependency detected|possible recursive locking detected|"
                  r"inconsistent lock state|suspicious RCU usage|bad unlock balance detected!?)",
       "lockdep: {0}"),
    _p("hung-task", r"INFO: task ([^\s:]+):\d+ blocked for more than \d+ seconds", "hung task: {0}"),
    _p("rcu-stall", r"(?:INFO|rcu: INFO): rcu_(?:preempt|sched|bh) (?:self-)?detected (?:expedited )?stalls?",
       "RCU stall"),
    _p("soft-lockup", r"BUG: soft lockup - CPU#(\d+) stuck", "soft lockup on CPU {0}"),
    _p("kernel-bug", r"kernel BUG at ([^\s!]+)!?", "kernel BUG at {0}"),
    _p("panic", r"Kernel panic - not syncing: (.+?)\s*$", "Kernel panic: {0}"),
    _p("bug", r"BUG: (.+?)\s*$", "BUG: {0}"),
    _p("warning", r"WARNING: CPU: \d+ PID: \d+ at (\S+)(?: (\S+?)\+0x)?", "WARNING at {0} {1}"),
    # 7.x: "WARNING: arch/arm64/kvm/debug.c:157 at kvm_vcpu_load_debug+0x190/0x230, CPU#0: python3/170"
    _p("warning-7x", r"WARNING: (\S+:\d+) at (\S+?)\+0x", "WARNING at {0} {1}"),
    _p("warning-other", r"WARNING: (.+?)\s*$", "WARNING: {0}"),
    _p("unable-to-handle", r"Unable to handle kernel (.+?) at virtual address ([0-9a-fx]+)",
       "Unable to handle kernel {0} at {1}"),
    _p("oops", r"Internal error: (.+?)\s*$", "Internal error: {0}"),
    _p("unhandled-fault", r"Unhandled fault: (.+?)\s*$", "Unhandled fault: {0}"),
]

EXCERPT_END = re.compile(r"---\[ end (?:trace|Kernel panic)")


@dataclass
class Crash:
    pattern: str
    title: str
    line: int  # 0-based index in the scanned text
    excerpt: str


def scan(text: str, max_lines: int = 40) -> list[Crash]:
    """Every crash report in `text`, first line first; lines of one report that match
    again (a panic after an oops) are part of its excerpt, not a new crash."""
    lines = text.replace("\r", "").splitlines()
    crashes: list[Crash] = []
    covered = -1
    for i, line in enumerate(lines):
        for pattern in PATTERNS:
            m = pattern.regex.search(line)
            if not m:
                continue
            if i <= covered:
                break
            if pattern.name == "panic" and crashes and i - covered <= 3:
                # The panic an oops ends in is part of that report.
                crashes[-1].excerpt += "\n" + "\n".join(lines[covered + 1:i + 1])
                covered = i
                break
            end = i + 1
            while end < len(lines) and end - i < max_lines:
                end += 1
                if EXCERPT_END.search(lines[end - 1]):
                    break
            title = pattern.title.format(*[(g or "").strip() for g in m.groups()]).strip()
            crashes.append(Crash(pattern.name, title, i, "\n".join(lines[i:end])))
            covered = max(covered, end - 1)
            break
    return crashes
