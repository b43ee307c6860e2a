"""The L2 guest payloads (images/l2/*.S): assembled with binutils-aarch64-linux-gnu
when the images are built, and given their parameters per scenario by patching the
128-byte block at the symbol `params`:

    touch.S   the guest that touches memory (layout: TouchParams), as touch.bin for the
              probe VMM and touch.elf for L1's QEMU; L3 in a nested scenario
    gh.S      kvmlab's guest hypervisor at virtual EL2 (layout: HypervisorParams), gh.bin
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from lab.core.errors import ImageError
from lab.core.paths import L2_IMAGE_DIR

SOURCE_DIR = L2_IMAGE_DIR
TOOLS = ("aarch64-linux-gnu-as", "aarch64-linux-gnu-ld", "aarch64-linux-gnu-objcopy", "aarch64-linux-gnu-nm")
MAGIC = b"KVMLABT1"
GH_MAGIC = b"KVMLABH1"
PARAMS_SIZE = 128
#: HCR_EL2 for L3: VM (stage 2 on), RW (EL1 is AArch64), E2H (RES1 for a VHE guest hypervisor).
GH_HCR = (1 << 0) | (1 << 31) | (1 << 34)
MAX_PASSES = 4
MAX_VCPUS = 8
ORDERS = {"forward": 0, "backward": 1, "scattered": 2}
PASS_WRITE, PASS_PAUSE, PASS_READ_FIRST = 1, 2, 4
#: After this pass's pause, L3 asks the guest hypervisor to invalidate the stage-2 the VMM
#: rewrote there (touch.S and gh.S: hvc KVMLAB_L2_TLBI).
PASS_L2_TLBI = 8
#: What a pass does to each address it visits.
PASS_KINDS = {"read": 0, "write": PASS_WRITE, "read-write": PASS_WRITE | PASS_READ_FIRST}


@dataclass
class TouchParams:
    base: int
    size: int
    stride: int = 4096
    order: str = "forward"
    vcpus: int = 1
    uart: int = 0x09000000
    #: Per pass: read / write / read-write; a pass in `pauses` is preceded by a pause.
    passes: list[str] = field(default_factory=lambda: ["write"])
    pauses: list[int] = field(default_factory=list)
    forever: bool = False
    #: Passes whose pause is followed by hvc KVMLAB_L2_TLBI (nested, l2_hypervisor.remap).
    l2_tlbi: list[int] = field(default_factory=list)
    #: Every vCPU touches the whole range, instead of its share of it.
    whole: bool = False

    def pack(self) -> bytes:
        if not 1 <= len(self.passes) <= MAX_PASSES:
            raise ValueError(f"1 to {MAX_PASSES} passes, not {len(self.passes)}")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ValueError(f"1 to {MAX_VCPUS} vCPUs, not {self.vcpus}")
        if self.stride <= 0 or self.size < self.stride:
            raise ValueError("the touched size must be at least one stride")
        if not set(self.l2_tlbi) <= set(self.pauses):
            raise ValueError(f"an L2 TLBI comes after a pause: passes {self.l2_tlbi} are not all in {self.pauses}")
        flags = [PASS_KINDS[p] | (PASS_PAUSE if i in self.pauses else 0) | (PASS_L2_TLBI if i in self.l2_tlbi else 0)
                 for i, p in enumerate(self.passes)]
        flags += [0] * (MAX_PASSES - len(flags))
        return MAGIC + struct.pack("<7Q4Q4Q", self.base, self.size, self.stride, ORDERS[self.order], self.vcpus,
                                   self.uart, len(self.passes), *flags, 0, 0, int(self.forever), int(self.whole))


@dataclass
class HypervisorParams:
    """gh.S's parameters: its stage-2 for L3 (VTTBR_EL2, VTCR_EL2), the HCR_EL2 it runs L3
    with, L3's entry point, and where its UART, stacks and per-vCPU reports are (L2 IPAs)."""

    vttbr: int
    vtcr: int
    entry: int
    stacks: int
    report: int
    uart: int = 0x09000000
    hcr: int = GH_HCR
    #: What L2 invalidates when L3 asks (KVMLAB_L2_TLBI): an L3 IPA range, one TLBI
    #: IPAS2E1IS per `tlbi_step` bytes (the leaf size it had); 0: nothing.
    tlbi_base: int = 0
    tlbi_size: int = 0
    tlbi_step: int = 0
    #: A second stage-2 (another VMID and root) for the odd vCPUs: two L3 guests; 0: none.
    vttbr2: int = 0

    def pack(self) -> bytes:
        body = GH_MAGIC + struct.pack("<11Q", self.vttbr, self.vtcr, self.hcr, self.entry, self.uart, self.stacks,
                                      self.report, self.tlbi_base, self.tlbi_size, self.tlbi_step, self.vttbr2)
        return body + bytes(PARAMS_SIZE - len(body))


def build(work: Path) -> dict[str, int]:
    """touch.elf, touch.bin and gh.bin in `work`; returns where `params` lies in each."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise ImageError(f"{missing[0]}: not found; run scripts/setup (apt-get install binutils-aarch64-linux-gnu)")

    def run(*cmd: str | Path) -> str:
        result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if result.returncode != 0:
            raise ImageError(f"{Path(str(cmd[0])).name} failed building the guest payload", detail=result.stderr)
        return result.stdout

    offsets: dict[str, int] = {}
    for name, magic, keep_elf in (("touch", MAGIC, True), ("gh", GH_MAGIC, False)):
        obj, elf, binary = work / f"{name}.o", work / f"{name}.elf", work / f"{name}.bin"
        run("aarch64-linux-gnu-as", "-I", SOURCE_DIR, "-o", obj, SOURCE_DIR / f"{name}.S")
        run("aarch64-linux-gnu-ld", "-z", "max-page-size=4096", "-T", SOURCE_DIR / "touch.ld", "-o", elf, obj)
        run("aarch64-linux-gnu-objcopy", "-O", "binary", elf, binary)
        obj.unlink()
        symbols = {line.split()[2]: int(line.split()[0], 16)
                   for line in run("aarch64-linux-gnu-nm", elf).splitlines() if len(line.split()) == 3}
        offsets[binary.name] = symbols["params"] - symbols["_start"]
        if keep_elf:
            offsets[elf.name] = _elf_offset(elf, symbols["params"])
        else:
            elf.unlink()
        for path in (binary, elf) if keep_elf else (binary,):
            offset = offsets[path.name]
            if path.read_bytes()[offset:offset + len(magic)] != magic:
                raise ImageError(f"{path.name}: no parameter block at {offset:#x}")
    return offsets


def _elf_offset(path: Path, vaddr: int) -> int:
    """The file offset of a virtual address, from the ELF64 program headers."""
    data = path.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_vaddr <= vaddr < p_vaddr + p_filesz:
            return p_offset + vaddr - p_vaddr
    raise ImageError(f"{path.name}: address {vaddr:#x} is in no loadable segment")


def patched(blob: bytes, offset: int, params: TouchParams | HypervisorParams) -> bytes:
    packed = params.pack()
    if blob[offset:offset + 8] != packed[:8]:
        raise ValueError(f"no {packed[:8].decode()} parameter block at {offset:#x}")
    return blob[:offset] + packed + blob[offset + PARAMS_SIZE:]
