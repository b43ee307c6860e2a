"""KVM's own dump of a stage-2 table (debugfs, CONFIG_PTDUMP_STAGE2_DEBUGFS, 7.1+), read
back into leaf sizes per 2 MiB region: the independent check of what the faults say.

In a nested run L1's probe copies `/sys/kernel/debug/kvm/PID-FD/nested/*-s2-enabled`,
one file per shadow MMU, at the end of the run (lab/shared/contract.ProbeReport's
`shadow_s2`). Each line is a run of leaves with the same level and attributes
(arch/arm64/mm/ptdump.c, note_page(); the bits are arch/arm64/kvm/ptdump.c's):

    0x0000000040000000-0x0000000040400000           4M 2   R W px ux AF BLK
    0x0000000040400000-0x0000000040600000         512K 3   R W px ux AF

Level 3 is 4 KiB pages, level 2 with BLK a 2 MiB block, level 1 with BLK 1 GiB. A line
with no attributes is invalid entries. The dump shows what is mapped when it is read: a
region mapped during the run and unmapped since (dirty logging, an MMU notifier
invalidation, which unmaps every shadow stage-2) is simply absent, and judged nowhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lab.analysis.mapping import BLOCK, BLOCK_1G, PAGES, REGION, SPLIT, Region
from lab.shared.units import GiB, KiB, MiB

_LINE = re.compile(r"^0x([0-9a-f]+)-0x([0-9a-f]+)\s+\d+[KMGTPE]\s+(\d)\b(.*)$")
LEAF = {3: 4 * KiB, 2: 2 * MiB, 1: GiB}
#: the leaf size a region's dump shows, as the label mapping.py gives the faults
LABEL = {4 * KiB: PAGES, 2 * MiB: BLOCK, GiB: BLOCK_1G}


@dataclass(frozen=True)
class Leaves:
    start: int
    end: int
    size: int  # of each leaf


def parse(text: str) -> list[Leaves]:
    """The valid leaves of one dump, in address order; other lines are skipped."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m is None:
            continue
        start, end, level, attrs = int(m.group(1), 16), int(m.group(2), 16), int(m.group(3)), m.group(4).split()
        if not attrs or "F" in attrs or level not in LEAF:
            continue  # invalid entries
        if level < 3 and "BLK" not in attrs:
            continue  # a table descriptor: the walk reports leaves only, so not expected
        out.append(Leaves(start, end, LEAF[level]))
    return out


def regions(leaves: list[Leaves]) -> dict[int, set[int]]:
    """Per 2 MiB region: the leaf sizes mapped in it."""
    out: dict[int, set[int]] = {}
    for run in leaves:
        start = run.start // REGION * REGION
        while start < run.end:
            out.setdefault(start, set()).add(run.size)
            start += REGION
    return out


def cross_check(dumps: dict[str, str], inferred: dict[int, Region], what: str = "") -> dict[str, object]:
    """A verdict check: every touched region the dumps map has the leaf size the faults
    gave it. Regions the dumps no longer map are counted, not judged. `what` names the
    table (default: the shadow MMUs of a nested run)."""
    seen: dict[int, set[int]] = {}
    for text in dumps.values():
        for start, sizes in regions(parse(text)).items():
            seen.setdefault(start, set()).update(sizes)
    agree: list[tuple[int, str, str]] = []
    differ: list[tuple[int, str, str]] = []
    absent: list[int] = []
    for start, region in sorted(inferred.items()):
        sizes = seen.get(start, set())
        if not sizes:
            absent.append(start)
            continue
        shown = PAGES if sizes == {4 * KiB} else LABEL[max(sizes)] if len(sizes) == 1 else "mixed"
        want = PAGES if region.mapping == SPLIT else region.mapping
        (agree if shown == want else differ).append((start, shown, region.mapping))
    ok = not differ
    what = what or f"debugfs shadow stage-2 ({len(dumps)} MMU{'s' if len(dumps) != 1 else ''})"
    text = f"{what}: {len(agree)} region{'s' if len(agree) != 1 else ''} as the faults say"
    if absent:
        text += f", {len(absent)} no longer mapped"
    if differ:
        text += "; differ: " + ", ".join(f"{s:#x} dump {shown}, faults {faults}" for s, shown, faults in differ[:3])
    if not agree and not differ:
        text += "; nothing to compare (no touched region mapped at the end)"
    return {"check": "debugfs", "ok": ok, "text": text,
            "counts": {"agree": len(agree), "differ": len(differ), "absent": len(absent)}}
