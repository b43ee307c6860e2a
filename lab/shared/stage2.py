"""The stage-2 page tables of kvmlab's guest hypervisor (images/l2/gh.S): how L2 maps L3.

L2 runs at virtual EL2 under L1's nested KVM; it translates L3's IPAs (the input) to L2's
own physical addresses (the output, which are L1 memslot IPAs) with these tables, and KVM
in L1 builds its shadow stage-2 from them. Each range is mapped with one leaf size, the
thing a nested scenario varies: 4K pages (level 3), 2M blocks (level 2) or 1G blocks
(level 1). The probe VMM in L1 (l1.probe) writes the tables into the payload's memslot
before the first vCPU runs; the payload loads VTCR_EL2 and VTTBR_EL2 from its parameters.

Format (Arm ARM D8, VMSAv8-64 stage 2): 4 KiB granule, a 39-bit input (T0SZ 25) walked
from level 1 (SL0 1), a 40-bit output (PS 2). Descriptors: table 0b11 at levels 1-2,
block 0b01 at levels 1-2, page 0b11 at level 3; MemAttr[5:2] 0b1111 (Normal write-back)
or 0b0001 (Device-nGnRE); S2AP[7:6] 0b11 read-write or 0b01 read-only; SH[9:8] inner
shareable; AF[10] set (no access-flag faults); XN[54:53] 0b10 for device memory.

Standard library only, no effects at import: L1 imports it too (lab/shared).
"""

from __future__ import annotations

import struct

from lab.shared.codec import record
from lab.shared.units import GiB, KiB, MiB

GRANULE = 4 * KiB
#: Leaf size -> the level its descriptor sits at.
LEVELS = {4 * KiB: 3, 2 * MiB: 2, GiB: 1}
LEAVES = {"4K": 4 * KiB, "2M": 2 * MiB, "1G": GiB}
INPUT_BITS = 39
T0SZ = 64 - INPUT_BITS
#: VTCR_EL2: T0SZ, SL0 = 1 (start at level 1), IRGN0 = ORGN0 = 1 (write-back), SH0 = 3
#: (inner shareable), TG0 = 0 (4 KiB), PS = 2 (40-bit output), bit 31 RES1.
VTCR = (1 << 31) | (2 << 16) | (3 << 12) | (1 << 10) | (1 << 8) | (1 << 6) | T0SZ
VALID, TABLE, PAGE_OR_TABLE = 0b01, 0b11, 0b11
NORMAL = 0b1111 << 2
DEVICE = 0b0001 << 2
S2AP_RW, S2AP_RO = 0b11 << 6, 0b01 << 6
SH_INNER = 0b11 << 8
AF = 1 << 10
XN = 0b10 << 53
OUTPUT_MASK = ((1 << 48) - 1) & ~(GRANULE - 1)


@record
class Range:
    """One range of L3's IPA space: `size` bytes from `ipa` onto L2's `output`, in leaves
    of `leaf` bytes (4K, 2M or 1G)."""

    ipa: int
    size: int
    output: int
    leaf: int = 2 * MiB
    writable: bool = True
    device: bool = False


def attributes(r: Range) -> int:
    return (DEVICE | XN if r.device else NORMAL) | (S2AP_RW if r.writable else S2AP_RO) | SH_INNER | AF


def _index(ipa: int, level: int) -> int:
    return (ipa >> (12 + 9 * (3 - level))) & 511


class Tables:
    """The tables for a list of ranges, to be written at guest-physical `base` (L2's
    address space): table 0 is the root. Raises ValueError for a range that is not
    aligned to its leaf, lies outside the 39-bit input, overlaps another, or needs more
    than `limit` tables."""

    def __init__(self, ranges: list[Range], base: int, limit: int = 256):
        if base % GRANULE:
            raise ValueError(f"table base {base:#x} is not 4K-aligned")
        self.base, self.limit = base, limit
        self.tables: list[bytearray] = [bytearray(GRANULE)]
        for r in ranges:
            if r.leaf not in LEVELS:
                raise ValueError(f"leaf {r.leaf:#x}: 4K, 2M or 1G")
            if r.size <= 0 or (r.ipa | r.size | r.output) % r.leaf:
                raise ValueError(f"range {r.ipa:#x}+{r.size:#x} -> {r.output:#x}: not aligned to its "
                                 f"{r.leaf // KiB}K leaf")
            if r.ipa + r.size > 1 << INPUT_BITS or r.output + r.size > 1 << 40:
                raise ValueError(f"range {r.ipa:#x}+{r.size:#x}: beyond the {INPUT_BITS}-bit input or 40-bit output")
            attrs = attributes(r)
            for at in range(0, r.size, r.leaf):
                self._map(r.ipa + at, r.output + at, LEVELS[r.leaf], attrs)

    @property
    def root(self) -> int:
        return self.base

    def image(self) -> bytes:
        return b"".join(self.tables)

    def vttbr(self, vmid: int) -> int:
        return (vmid & 0xFF) << 48 | self.root

    def _entry(self, table: int, index: int) -> int:
        value: int = struct.unpack_from("<Q", self.tables[table], index * 8)[0]
        return value

    def _set(self, table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.tables[table], index * 8, value)

    def _map(self, ipa: int, output: int, leaf_level: int, attrs: int) -> None:
        table = 0
        for level in range(1, leaf_level):
            index = _index(ipa, level)
            entry = self._entry(table, index)
            if entry & 3 == 0:
                if len(self.tables) >= self.limit:
                    raise ValueError(f"the ranges need more than {self.limit} stage-2 tables")
                self.tables.append(bytearray(GRANULE))
                entry = self.base + (len(self.tables) - 1) * GRANULE | TABLE
                self._set(table, index, entry)
            elif entry & 3 != TABLE:
                raise ValueError(f"IPA {ipa:#x}: overlaps a block mapped at level {level}")
            table = ((entry & OUTPUT_MASK) - self.base) // GRANULE
        index = _index(ipa, leaf_level)
        if self._entry(table, index):
            raise ValueError(f"IPA {ipa:#x}: mapped twice")
        self._set(table, index, output | attrs | (PAGE_OR_TABLE if leaf_level == 3 else VALID))


def walk(image: bytes, base: int, ipa: int) -> tuple[int, int, int] | None:
    """(output address, leaf size, descriptor) of `ipa` in tables written at `base`, or
    None where nothing is mapped: a reader of the tables the way the MMU walks them."""
    table = base
    for level in (1, 2, 3):
        offset = table - base + _index(ipa, level) * 8
        if not 0 <= offset < len(image):
            raise ValueError(f"a table descriptor points outside the tables: {table:#x}")
        entry = struct.unpack_from("<Q", image, offset)[0]
        if not entry & VALID:
            return None
        size = 1 << (12 + 9 * (3 - level))
        if level == 3 or entry & 3 == VALID:
            if level == 3 and entry & 3 != PAGE_OR_TABLE:
                return None  # 0b01 at level 3 is reserved: invalid
            out = (entry & OUTPUT_MASK & ~(size - 1)) | (ipa & (size - 1))
            return out, size, entry
        table = entry & OUTPUT_MASK
    return None
