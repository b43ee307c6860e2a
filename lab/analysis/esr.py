"""ESR_EL2 (the `hsr` field of kvm:kvm_guest_fault) decoded, per the Arm ARM (D17.2.37):
EC = bits [31:26]; for data and instruction aborts ISS bit 6 is WnR (data only) and
bits [5:0] are the fault status code (DFSC/IFSC)."""

from __future__ import annotations

from dataclasses import dataclass

EC_NAMES = {0x20: "instruction abort", 0x24: "data abort"}
# Fault status code -> (kind, level); levels -1..3 (-1: FEAT_LPA2's extra level)
FSC: dict[int, tuple[str, int]] = {}
for _level in range(4):
    FSC[0x04 + _level] = ("translation", _level)
    FSC[0x08 + _level] = ("access flag", _level)
    FSC[0x0C + _level] = ("permission", _level)
    FSC[0x14 + _level] = ("external abort on walk", _level)
FSC[0x2B] = ("translation", -1)
FSC[0x29] = ("access flag", -1)
FSC[0x10] = ("external abort", -2)
FSC[0x21] = ("alignment", -2)
FSC[0x30] = ("TLB conflict", -2)


@dataclass(frozen=True)
class Esr:
    value: int

    @property
    def ec(self) -> int:
        return (self.value >> 26) & 0x3F

    @property
    def is_abort(self) -> bool:
        return self.ec in (0x20, 0x24)

    @property
    def is_data(self) -> bool:
        return self.ec == 0x24

    @property
    def write(self) -> bool:
        """WnR: a write (data aborts only; an instruction fetch is a read)."""
        return self.is_data and bool(self.value & (1 << 6))

    @property
    def fsc(self) -> int:
        return self.value & 0x3F

    @property
    def kind(self) -> str:
        return FSC.get(self.fsc, ("other", -2))[0] if self.is_abort else EC_NAMES.get(self.ec, f"EC {self.ec:#x}")

    @property
    def level(self) -> int | None:
        """The stage-2 table level the fault was taken at, or None if the code has none."""
        if not self.is_abort:
            return None
        level = FSC.get(self.fsc, ("other", -2))[1]
        return None if level == -2 else level

    def describe(self) -> str:
        if not self.is_abort:
            return f"{self.kind} (ESR {self.value:#010x})"
        what = "instruction fetch" if self.ec == 0x20 else ("write" if self.write else "read")
        level = "" if self.level is None else f" L{self.level}"
        return f"{what}: {self.kind}{level}"
