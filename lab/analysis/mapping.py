"""From stage-2 faults to how KVM mapped each region of guest physical memory.

The tracepoint does not say the mapping size; the faults do. Said here for the 4 KiB
granule (40-bit IPA); with 16 KiB pages a region is 32 MiB and a level-1 block 64 GiB
(Granule below), and the rules are the same:
- arm64 KVM maps exactly what one fault resolves, nothing around it. A 2 MiB region
  mapped with pages faults once per page touched; the first at level 2 (or 1) because no
  level-3 table exists yet, every later one at level 3. A region mapped as one block
  faults once, at level 2 or 1, and never at level 3.
- So: any level-3 fault in a region means pages; faults only at levels 1-2 mean a block,
  provided the guest touched more than one page of it (one page proves nothing).
- A permission or access-flag fault at level 2 is the hardware saying "a block lives
  here"; at level 3, "a page". Such a fault followed by level-3 faults in the same region
  is a block broken into pages (dirty logging).
- Regions the guest touched that never fault: mapped by an earlier fault of a larger
  block (1 GiB: the only fault of the GiB is at level 1) or before the window observed.

Pure functions over decoded faults; lab/analysis/trace.py turns raw traces into Faults.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

from lab.analysis.esr import Esr
from lab.shared.units import KiB, MiB, human_size

PAGE = 4 * KiB
REGION = 2 * MiB
#: The page sizes an arm64 L1 can have
PAGE_SIZES = (4 * KiB, 16 * KiB, 64 * KiB)

BLOCK, PAGES, SPLIT, BLOCK_1G, NONE, UNKNOWN, MMIO = "block", "page", "split", "block-1g", "untouched", "block?", "mmio"
#: What each mapping label means, for people.
LABELS = {BLOCK: "2 MiB block", PAGES: "4 KiB pages", SPLIT: "block split into pages",
          BLOCK_1G: "inside a 1 GiB block", NONE: "no faults",
          UNKNOWN: "one fault below level 3: a block, unless only one page was touched",
          MMIO: "the same page faulting again and again: MMIO (no memslot there)"}


@dataclass(frozen=True)
class Granule:
    """L1's page size, and what it makes of a stage-2 table: a level-2 block maps one
    table of 8-byte descriptors' worth of pages (4 KiB: 2 MiB; 16 KiB: 32 MiB; 64 KiB:
    512 MiB), a level-1 block as many level-2 blocks (4 KiB: 1 GiB; 16 KiB: 64 GiB, which
    needs LPA2)."""

    page: int = PAGE

    @property
    def block(self) -> int:
        return self.page * (self.page // 8)

    @property
    def level1(self) -> int:
        return self.block * (self.page // 8)


G4K = Granule()


def granule_of(page_size: object) -> Granule:
    """The granule of an L1 that reported `page_size` (result.json's l1_page_size; absent
    in results from before it was recorded: 4 KiB, all L1 kernels had then)."""
    return Granule(page_size) if isinstance(page_size, int) and page_size in PAGE_SIZES else G4K


def labels(granule: Granule = G4K) -> dict[str, str]:
    """LABELS in the units of `granule`."""
    if granule == G4K:
        return LABELS
    return {**LABELS, BLOCK: f"{human_size(granule.block)} block", PAGES: f"{human_size(granule.page)} pages",
            BLOCK_1G: f"inside a {human_size(granule.level1)} block"}


def by_level(kinds: dict[tuple[str, int], int]) -> list[tuple[tuple[str, int], int]]:
    """Fault kinds ((kind, level): count) in order of level, then kind."""
    return sorted(kinds.items(), key=lambda kv: (kv[0][1], kv[0][0]))

@dataclass(frozen=True)
class Fault:
    ipa: int
    esr: int
    ts: int = 0
    cpu: int = 0
    phase: int = 0
    pc: int = 0
    #: the thread that took it (a vCPU's), from the event's pid
    tid: int = 0
    #: the same fault again after KVM gave it up for an mm invalidation (analysis/retry.py)
    retry: bool = False


@dataclass
class Region:
    start: int
    size: int = REGION
    faults: int = 0
    pages: set[int] = field(default_factory=set)
    kinds: Counter[tuple[str, int]] = field(default_factory=Counter)  # ("translation", 2) -> n
    writes: int = 0
    mapping: str = NONE
    first_level: int | None = None
    #: faults that were retries (analysis/retry.py): shown, not held against a bound
    retried: int = 0

    @property
    def counted(self) -> int:
        """The faults a bound on faults per region is checked against."""
        return self.faults - self.retried

    @property
    def level3(self) -> int:
        return sum(n for (kind, level), n in self.kinds.items() if level == 3)

    def evidence(self) -> str:
        if not self.faults:
            return "no faults"
        parts = ", ".join(f"{n} {kind} L{level}" for (kind, level), n in by_level(self.kinds))
        retried = f"; {self.retried} retried after an mm invalidation" if self.retried else ""
        return f"{self.faults} fault{'s' if self.faults != 1 else ''} ({parts}{retried})"


def regions_of(faults: list[Fault], size: int = REGION, page: int = PAGE) -> dict[int, Region]:
    """Faults grouped by `size`-aligned IPA region, in time order within each (pages of
    `page` bytes)."""
    out: dict[int, Region] = {}
    for f in faults:
        start = f.ipa // size * size
        r = out.get(start)
        if r is None:
            r = out[start] = Region(start, size)
        kind, level, write = esr_summary(f.esr)
        r.faults += 1
        r.retried += f.retry
        r.pages.add(f.ipa // page)
        r.kinds[(kind, level if level is not None else -1)] += 1
        r.writes += write
        if r.first_level is None:
            r.first_level = level
    return out


@functools.lru_cache(maxsize=4096)
def esr_summary(esr: int) -> tuple[str, int | None, bool]:
    """(kind, level, write) of an ESR value, decoded once: a trace holds thousands of faults
    and a handful of distinct ESRs (decoding each fault anew was most of the host's
    analysis time)."""
    d = Esr(esr)
    return d.kind, d.level, d.write


def classify(region: Region, touched_pages: int | None = None) -> str:
    """block, page, split, unknown or untouched for one region (see the module doc)."""
    if not region.faults:
        return NONE
    if len(region.pages) == 1 and region.faults >= 3 and touched_pages is None:
        return MMIO
    if region.level3:
        block_first = any(kind in ("permission", "access flag") and level == 2
                          for (kind, level) in region.kinds)
        return SPLIT if block_first else PAGES
    if any(kind in ("permission", "access flag") and level == 2 for (kind, level) in region.kinds):
        return BLOCK
    touched = touched_pages if touched_pages is not None else len(region.pages)
    return BLOCK if touched > 1 else UNKNOWN


@dataclass
class Touched:
    """What the guest accessed: [base, base+size) every `stride` bytes."""
    base: int
    size: int
    stride: int = PAGE

    def pages_in(self, start: int, length: int) -> int:
        lo, hi = max(start, self.base), min(start + length, self.base + self.size)
        if lo >= hi:
            return 0
        first = (lo - self.base + self.stride - 1) // self.stride
        last = (hi - self.base - 1) // self.stride
        return max(0, last - first + 1)


def infer(faults: list[Fault], touched: Touched | None = None,
          window: tuple[int, int] | None = None, granule: Granule = G4K) -> dict[int, Region]:
    """Every region (a level-2 block's span: 2 MiB with 4 KiB pages) in `window` (default:
    where the guest touched, else where faults fell), classified. Touched regions without
    faults inside a level-1 block's span (1 GiB) whose only faults are at level 1 are
    `block-1g`."""
    size, big = granule.block, granule.level1
    if window is None and touched is not None:
        window = (touched.base, touched.base + touched.size)
    if window is not None:
        faults = [f for f in faults if window[0] <= f.ipa < window[1]]
    regions = regions_of(faults, size, granule.page)
    if touched is not None:
        lo = (window[0] if window else touched.base) // size * size
        hi = window[1] if window else touched.base + touched.size
        for start in range(lo, hi, size):
            if touched.pages_in(start, size) and start not in regions:
                regions[start] = Region(start, size)
    gigs = regions_of(faults, big, granule.page)
    for start, r in regions.items():
        n = touched.pages_in(start, size) if touched else None
        r.mapping = classify(r, n)
        gig = gigs.get(start // big * big)
        if gig is not None and not any(level in (2, 3) for (_, level) in gig.kinds) \
                and r.mapping in (NONE, UNKNOWN, BLOCK):
            # the whole level-1 span took faults only at level 1: one level-1 block
            # ... unless the guest touched only one region of it (its first fault is L1 too)
            if touched is not None and sum(1 for s in range(gig.start, gig.start + big, size)
                                      if touched.pages_in(s, size)) > 1:
                r.mapping = BLOCK_1G
    return dict(sorted(regions.items()))


def summary(regions: dict[int, Region]) -> Counter[str]:
    return Counter(r.mapping for r in regions.values())


def describe(regions: dict[int, Region]) -> str:
    """e.g. '32 block (1 fault each)' or '30 block, 2 page (512 faults each)'."""
    parts = []
    for mapping, n in sorted(summary(regions).items(), key=lambda kv: -kv[1]):
        counts = sorted({r.faults for r in regions.values() if r.mapping == mapping})
        if not counts or mapping == NONE:
            each = ""
        elif len(counts) == 1:
            each = f" ({counts[0]} fault{'s' if counts[0] != 1 else ''} each)"
        else:
            each = f" ({counts[0]}-{counts[-1]} faults each)"
        parts.append(f"{n} {mapping}{each}")
    return ", ".join(parts) or "no regions"
