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
from lab.shared.units import GiB, KiB, MiB

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
    #: false: L2 maps the range read-only (S2AP 0b01); an L3 write there is L2's to handle
    writable: bool = True


@dataclass
class L2Remap:
    """L2 changing its stage-2 under a running L3: at the guest's pause `at` (1 = its first)
    the VMM rewrites L2's tables in place so that the `stage2` ranges have their new leaf
    (each still maps its memslot at its own address), and when the guest resumes L3 asks L2
    to invalidate what changed (gh.S: TLBI IPAS2E1IS for each old leaf of the span, then
    VMALLE1IS), as a hypervisor must after changing a live stage-2."""
    at: int
    stage2: list[L2Range]


@dataclass
class L2Hypervisor:
    """A nested scenario (vmm: probe): the probe's payload is kvmlab's guest hypervisor at
    virtual EL2 (images/l2/gh.S), the guest runs as L3 under L2's stage-2, which maps every
    memslot at the same address (L3 IPA = L2 IPA) with `leaf`, or as `stage2` says for a
    range of it."""
    leaf: int = 2 * MiB
    stage2: list[L2Range] = field(default_factory=list)
    remap: L2Remap | None = None
    #: 2: two L3 guests, the odd vCPUs under a second stage-2 (VMID 2, the same ranges from
    #: its own root), so that L1's KVM keeps two shadow MMUs at once
    vmids: int = 1

    def after_remap(self) -> L2Hypervisor:
        """L2's stage-2 as the remap leaves it: its ranges replace what they cover."""
        assert self.remap is not None
        new = self.remap.stage2
        kept = [r for r in self.stage2 if not any(_overlap(r, n) for n in new)]
        return L2Hypervisor(self.leaf, kept + new)


def _overlap(a: L2Range, b: L2Range) -> bool:
    return a.slot == b.slot and a.offset < b.offset + b.size and b.offset < a.offset + a.size


def _ranges(c: Checker, raw: Any, key: str, memslots: list[Memslot]) -> list[L2Range]:
    """A `stage2` list: ranges of memslots, each with its leaf (4K by default)."""
    if not isinstance(raw or [], list):
        c.fail(key, raw, "a list of ranges ({slot, offset, size, leaf})")
    ranges = []
    for i, item in enumerate(raw or []):
        at = f"{key}[{i}]"
        r = c.mapping(at, item, ("slot", "offset", "size", "leaf", "writable"))
        slot = c.get(r, "slot", f"{at}.slot", v.integer(1, len(memslots)), 1)
        mem = memslots[slot - 1]
        size_of = stage2.LEAVES[c.get(r, "leaf", f"{at}.leaf", v.choice(tuple(stage2.LEAVES)), "4K")]
        offset = c.get(r, "offset", f"{at}.offset", v.size(0, mem.size - size_of, size_of), 0)
        size = c.get(r, "size", f"{at}.size", v.size(size_of, mem.size - offset, size_of), mem.size - offset)
        ranges.append(L2Range(slot, offset, size, size_of, c.get(r, "writable", f"{at}.writable", v.boolean, True)))
    return ranges



def parse_l2_hypervisor(c: Checker, data: dict[str, Any], vmm: str, memslots: list[Memslot],
                        pauses: int = 0, vcpus: int = 1) -> L2Hypervisor | None:
    """The `l2_hypervisor` key (`pauses`, `vcpus`: the guest's, for the remap and the VMIDs)."""
    raw = data.get("l2_hypervisor")
    if raw is None:
        return None
    if vmm != "probe":
        c.fail("l2_hypervisor", raw, "vmm: probe (the guest hypervisor is the probe VMM's payload)")
    h = c.mapping("l2_hypervisor", raw, ("leaf", "stage2", "remap", "vmids"))
    leaf = stage2.LEAVES[c.get(h, "leaf", "l2_hypervisor.leaf", v.choice(tuple(stage2.LEAVES)), "2M")]
    hypervisor = L2Hypervisor(leaf, _ranges(c, h.get("stage2"), "l2_hypervisor.stage2", memslots),
                              vmids=c.get(h, "vmids", "l2_hypervisor.vmids", v.integer(1, 2), 1))
    if hypervisor.vmids == 2 and vcpus < 2:
        c.fail("l2_hypervisor.vmids", 2, "1, or 2 with guest.vcpus 2 or more (the odd vCPUs are the second L3 guest)")
    if hypervisor.vmids == 2 and h.get("remap") is not None:
        c.fail("l2_hypervisor.remap", h["remap"], "no remap with vmids: 2 (L2 invalidates one VMID)")
    _buildable(c, "l2_hypervisor", raw, hypervisor, memslots)
    if h.get("remap") is not None:
        m = c.mapping("l2_hypervisor.remap", h["remap"], ("at", "stage2"))
        at = m.get("at")
        n = int(at[6:]) if isinstance(at, str) and at.startswith("pause ") and at[6:].isdigit() else 0
        if not 1 <= n <= pauses:
            c.fail("l2_hypervisor.remap.at", at, f"'pause N', N from 1 to {pauses} (the guest's pauses: guest.pauses)"
                   if pauses else "'pause N' of a guest that pauses (guest.pauses)")
        new = _ranges(c, m.get("stage2"), "l2_hypervisor.remap.stage2", memslots)
        if not new:
            c.fail("l2_hypervisor.remap.stage2", m.get("stage2"),
                   "the ranges L2 maps anew ({slot, offset, size, leaf})")
        for r in hypervisor.stage2:
            if any(_overlap(r, x) for x in new) and not any(
                    x.slot == r.slot and x.offset <= r.offset and r.offset + r.size <= x.offset + x.size for x in new):
                c.fail("l2_hypervisor.remap.stage2", m.get("stage2"),
                       "ranges that cover each l2_hypervisor.stage2 range they touch whole, or none of it")
        hypervisor.remap = L2Remap(n, new)
        _buildable(c, "l2_hypervisor.remap", h["remap"], hypervisor.after_remap(), memslots)
    return hypervisor


def _buildable(c: Checker, key: str, raw: Any, h: L2Hypervisor, memslots: list[Memslot]) -> None:
    try:
        stage2.Tables(l3_ranges(h, memslots), PROBE_CODE_IPA + GH_TABLES, GH_TABLES_MAX)
    except ValueError as exc:
        c.fail(key, raw, f"a stage-2 L2 can map: {exc}")


#: In a nested scenario's payload memslot: L3's code, the stacks' top (and the reports
#: above it), L2's stage-2 tables (offsets; images/l2/gh.S has the rest of the layout).
GH_L3_CODE, GH_STACKS, GH_TABLES = 64 * KiB, 192 * KiB, 1 * MiB
#: The second L3 guest's copy of the tables (vmids: 2), and how many tables each may take.
GH_TABLES2, GH_TABLES_MAX = 1536 * KiB, 128


def tlbi_span(h: L2Hypervisor, memslots: list[Memslot]) -> tuple[int, int, int]:
    """What L2 invalidates after its remap: (first L3 IPA, size, step), the span of the
    remapped ranges in steps of the smallest leaf L2 had there (one TLBI IPAS2E1IS each)."""
    assert h.remap is not None
    ipas = [(memslots[r.slot - 1].ipa + r.offset, memslots[r.slot - 1].ipa + r.offset + r.size) for r in h.remap.stage2]
    lo, hi = min(a for a, _ in ipas), max(b for _, b in ipas)
    step = min(r.leaf for r in l3_ranges(h, memslots) if r.ipa < hi and lo < r.ipa + r.size)
    return lo, hi - lo, step


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
            out.append(stage2.Range(m.ipa + r.offset, r.size, m.ipa + r.offset, r.leaf, r.writable))
            at = max(at, r.offset + r.size)
        if at < m.size:
            out.append(stage2.Range(m.ipa + at, m.size - at, m.ipa + at, h.leaf))
    return out


#: L2's leaf size -> the fault map's colour for it (lab/results/figures.py).
_LEAF_MAPPING = {4 * KiB: "page", 2 * MiB: "block", GiB: "block-1g"}


def level_maps(h: L2Hypervisor, memslots: list[Memslot], shadow: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fault maps of a nested run, per level: L2's own stage-2 for L3 (its leaf in each
    region the shadow maps show; after its remap too), then the shadow stage-2's maps (L1's
    trace), labelled as such."""
    starts = [r["start"] for r in (shadow[0]["regions"] if shadow else [])]
    layouts = [("L2's stage-2 for L3 (its leaf per region)", h)]
    if h.remap is not None:
        layouts.append((f"L2's stage-2 after its remap at pause {h.remap.at}", h.after_remap()))
    out = []
    for label, layout in layouts:
        ranges = l3_ranges(layout, memslots)
        leaf = {s: next((r.leaf for r in ranges if r.ipa <= int(s, 16) < r.ipa + r.size), 0) for s in starts}
        out.append({"label": label, "regions": [{"start": s, "mapping": _LEAF_MAPPING.get(leaf[s], "untouched"),
                                                 "faults": 0} for s in starts]})
    return out + [{**m, "label": "shadow stage-2" + (f", {m['label']}" if m.get("label") else "")} for m in shadow]
