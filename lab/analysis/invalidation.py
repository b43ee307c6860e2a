"""What the MMU notifier unmapped around each VMM action: the evidence that a refault
after a collapse, a split or a madvise was caused by that action.

The probe writes "kvmlab: pause N" to the trace before the actions it runs at pause N,
and "kvmlab: phase N" after them; every kvm:kvm_unmap_hva_range between the two that
overlaps memslot 1's host range is that action's invalidation of the VM's memory.
"""

from __future__ import annotations

from typing import Any

from lab.analysis.trace import Trace
from lab.shared.units import human_size


def windows(trace: Trace) -> dict[int, tuple[int, int]]:
    """{N: (ts of "kvmlab: pause N", ts of "kvmlab: phase N")} for each pause that ended."""
    opened: dict[int, int] = {}
    out: dict[int, tuple[int, int]] = {}
    for ts, text in trace.markers:
        words = text.split()
        if len(words) == 3 and words[0] == "kvmlab:" and words[2].isdigit():
            n = int(words[2])
            if words[1] == "pause":
                opened[n] = ts
            elif words[1] == "phase" and n in opened:
                out[n] = (opened[n], ts)
    return out


def at_pauses(trace: Trace, start: int, size: int) -> dict[int, tuple[int, int]]:
    """{pause N: (invalidations overlapping [start, start+size), bytes of that range
    they covered together)} for every pause that ended (0, 0 where none did)."""
    out = {}
    for n, (lo, hi) in windows(trace).items():
        pieces = sorted((max(a, start), min(b, start + size)) for ts, a, b in trace.invalidations
                        if lo <= ts <= hi and a < start + size and b > start)
        covered = end = 0
        for a, b in pieces:  # their union: a range unmapped twice counts once
            if b > end:
                covered += b - max(a, end)
                end = b
        out[n] = (len(pieces), covered)
    return out


def describe(trace: Trace, probe: dict[str, Any], actions: dict[int, list[str]], recorded: bool) -> list[str]:
    """A line per pause with VMM actions: what the MMU notifier unmapped of memslot 1
    while they ran ("pause 1 (split): the MMU notifier unmapped 16 MiB of memslot 1 in 8
    ranges"). Empty unless the run `recorded` kvm_unmap_hva_range (the kernel has it)."""
    slots = [s for s in probe.get("memslots") or [] if s.get("slot") == 1]
    if not slots or not recorded:
        return []
    slot = slots[0]
    lines = []
    for n, (count, covered) in sorted(at_pauses(trace, slot["userspace_addr"], slot["size"]).items()):
        if n not in actions:
            continue
        what = f"pause {n} ({', '.join(actions[n])}): the MMU notifier unmapped "
        lines.append(what + (f"{human_size(covered)} of memslot 1 in {count} range{'s' if count != 1 else ''}"
                             if count else "nothing of memslot 1"))
    return lines
