"""The L2 guest payloads (images/l2/*.S): assembled with binutils-aarch64-linux-gnu
when the images are built, and given their parameters per scenario by patching the
128-byte block at the symbol `params` (layout: images/l2/touch.S)."""

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
PARAMS_SIZE = 128
MAX_PASSES = 4
MAX_VCPUS = 8
ORDERS = {"forward": 0, "backward": 1, "scattered": 2}
PASS_WRITE, PASS_PAUSE, PASS_READ_FIRST = 1, 2, 4
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

    def pack(self) -> bytes:
        if not 1 <= len(self.passes) <= MAX_PASSES:
            raise ValueError(f"1 to {MAX_PASSES} passes, not {len(self.passes)}")
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise ValueError(f"1 to {MAX_VCPUS} vCPUs, not {self.vcpus}")
        if self.stride <= 0 or self.size < self.stride:
            raise ValueError("the touched size must be at least one stride")
        flags = [PASS_KINDS[p] | (PASS_PAUSE if i in self.pauses else 0) for i, p in enumerate(self.passes)]
        flags += [0] * (MAX_PASSES - len(flags))
        return MAGIC + struct.pack("<7Q4Q3Q", self.base, self.size, self.stride, ORDERS[self.order], self.vcpus,
                                   self.uart, len(self.passes), *flags, 0, 0, int(self.forever)) + bytes(8)


def build(work: Path) -> dict[str, int]:
    """touch.elf and touch.bin in `work`; returns where `params` lies in each."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise ImageError(f"{missing[0]}: not found; run scripts/setup (apt-get install binutils-aarch64-linux-gnu)")

    def run(*cmd: str | Path) -> str:
        result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if result.returncode != 0:
            raise ImageError(f"{Path(str(cmd[0])).name} failed building the guest payload", detail=result.stderr)
        return result.stdout

    run("aarch64-linux-gnu-as", "-o", work / "touch.o", SOURCE_DIR / "touch.S")
    run("aarch64-linux-gnu-ld", "-z", "max-page-size=4096", "-T", SOURCE_DIR / "touch.ld",
        "-o", work / "touch.elf", work / "touch.o")
    run("aarch64-linux-gnu-objcopy", "-O", "binary", work / "touch.elf", work / "touch.bin")
    (work / "touch.o").unlink()
    symbols = {line.split()[2]: int(line.split()[0], 16)
               for line in run("aarch64-linux-gnu-nm", work / "touch.elf").splitlines() if len(line.split()) == 3}
    in_bin = symbols["params"] - symbols["_start"]
    in_elf = _elf_offset(work / "touch.elf", symbols["params"])
    for path, offset in ((work / "touch.bin", in_bin), (work / "touch.elf", in_elf)):
        if path.read_bytes()[offset:offset + len(MAGIC)] != MAGIC:
            raise ImageError(f"{path.name}: no parameter block at {offset:#x}")
    return {"touch.bin": in_bin, "touch.elf": in_elf}


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


def patched(blob: bytes, offset: int, params: TouchParams) -> bytes:
    if blob[offset:offset + len(MAGIC)] != MAGIC:
        raise ValueError(f"no parameter block at {offset:#x}")
    return blob[:offset] + params.pack() + blob[offset + PARAMS_SIZE:]
