"""What L2 is to a probe scenario: the payload's memslot and the UART, and in a nested
scenario (`l2_hypervisor:`) kvmlab's guest hypervisor at virtual EL2 (images/l2/gh.S):
the layout of its memslot, the key that sets its stage-2 for L3, and that stage-2 as
ranges (lab/shared/stage2.py). The guest proper (touch.S) runs as L3; L3's IPAs are L2's
(every range is mapped at its own address), so a scenario's regions read the same."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lab.core import validate as v
from lab.core.validate import Checker
from lab.shared import stage2
from lab.shared.contract import Memslot
from lab.shared.units import KiB, MiB

PROBE_CODE_IPA = 0x1000_0000
#: A nested scenario's payload memslot: the guest hypervisor, L3's code, L2's stage-2 tables.
GH_MEMORY = 2 * MiB
UART = 0x0900_0000


@dataclass
class L2Range:
    """A range of a memslot that L2's stage-2 maps with its own leaf size."""
    slot: int
    offset: int
    size: int
    leaf: int


@dataclass
class L2Hypervisor:
    """A nested scenario (vmm: probe): the probe's payload is kvmlab's guest hypervisor at
    virtual EL2 (images/l2/gh.S), the guest runs as L3 under L2's stage-2, which maps every
    memslot at the same address (L3 IPA = L2 IPA) with `leaf`, or as `stage2` says for a
    range of it."""
    leaf: int = 2 * MiB
    stage2: list[L2Range] = field(default_factory=list)



def parse_l2_hypervisor(c: Checker, data: dict[str, Any], vmm: str, memslots: list[Memslot]) -> L2Hypervisor | None:
    raw = data.get("l2_hypervisor")
    if raw is None:
        return None
    if vmm != "probe":
        c.fail("l2_hypervisor", raw, "vmm: probe (the guest hypervisor is the probe VMM's payload)")
    h = c.mapping("l2_hypervisor", raw, ("leaf", "stage2"))
    leaf = stage2.LEAVES[c.get(h, "leaf", "l2_hypervisor.leaf", v.choice(tuple(stage2.LEAVES)), "2M")]
    if not isinstance(h.get("stage2") or [], list):
        c.fail("l2_hypervisor.stage2", h["stage2"], "a list of ranges ({slot, offset, size, leaf})")
    ranges = []
    for i, item in enumerate(h.get("stage2") or []):
        key = f"l2_hypervisor.stage2[{i}]"
        r = c.mapping(key, item, ("slot", "offset", "size", "leaf"))
        slot = c.get(r, "slot", f"{key}.slot", v.integer(1, len(memslots)), 1)
        mem = memslots[slot - 1]
        size_of = stage2.LEAVES[c.get(r, "leaf", f"{key}.leaf", v.choice(tuple(stage2.LEAVES)), "4K")]
        offset = c.get(r, "offset", f"{key}.offset", v.size(0, mem.size - size_of, size_of), 0)
        size = c.get(r, "size", f"{key}.size", v.size(size_of, mem.size - offset, size_of), mem.size - offset)
        ranges.append(L2Range(slot, offset, size, size_of))
    hypervisor = L2Hypervisor(leaf, ranges)
    try:
        stage2.Tables(l3_ranges(hypervisor, memslots), PROBE_CODE_IPA + GH_TABLES)
    except ValueError as exc:
        c.fail("l2_hypervisor", raw, f"a stage-2 L2 can map: {exc}")
    return hypervisor


#: In a nested scenario's payload memslot: L3's code, the stacks' top (and the reports
#: above it), L2's stage-2 tables (offsets; images/l2/gh.S has the rest of the layout).
GH_L3_CODE, GH_STACKS, GH_TABLES = 64 * KiB, 192 * KiB, 1 * MiB


def l3_ranges(h: L2Hypervisor, memslots: list[Memslot]) -> list[stage2.Range]:
    """L2's stage-2 for L3: every memslot at its own address, in `leaf` leaves except the
    ranges `stage2` names; L3's code (4K pages) and the UART (a 4K device page)."""
    out = [stage2.Range(PROBE_CODE_IPA + GH_L3_CODE, 64 * KiB, PROBE_CODE_IPA + GH_L3_CODE, 4 * KiB),
           stage2.Range(UART, 4 * KiB, UART, 4 * KiB, device=True)]
    for m in memslots:
        at = 0
        for r in sorted((r for r in h.stage2 if r.slot == m.slot), key=lambda r: r.offset):
            if r.offset > at:
                out.append(stage2.Range(m.ipa + at, r.offset - at, m.ipa + at, h.leaf))
            out.append(stage2.Range(m.ipa + r.offset, r.size, m.ipa + r.offset, r.leaf))
            at = max(at, r.offset + r.size)
        if at < m.size:
            out.append(stage2.Range(m.ipa + at, m.size - at, m.ipa + at, h.leaf))
    return out
