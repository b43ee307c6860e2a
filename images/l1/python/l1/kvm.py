"""The KVM API (arm64) and memory backings, through ctypes and fcntl.ioctl.

Numbers are from include/uapi/linux/kvm.h and arch/arm64/include/uapi/asm/kvm.h; the
backings are lab.shared.contract.BACKINGS (names as in tools/testing/selftests/kvm/lib).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct

from lab.shared.contract import BACKINGS
from lab.shared.contract import MADVICE as MADV
from lab.shared.units import MiB

KVMIO = 0xAE
#: L1's page size (4 KiB, or 16 KiB with Debian's arm64-16k flavour), and the span of one
#: PMD: a THP, and a stage-2 level-2 block (2 MiB, or 32 MiB).
PAGE = mmap.PAGESIZE
PMD = PAGE * (PAGE // 8)


def _io(nr: int) -> int:
    return (KVMIO << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (KVMIO << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (KVMIO << 8) | nr


class UserspaceMemoryRegion(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("guest_phys_addr", ctypes.c_uint64),
                ("memory_size", ctypes.c_uint64), ("userspace_addr", ctypes.c_uint64)]


class UserspaceMemoryRegion2(ctypes.Structure):
    """KVM_SET_USER_MEMORY_REGION2 (6.8+): a memslot that may be backed by a guest_memfd."""

    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("guest_phys_addr", ctypes.c_uint64),
                ("memory_size", ctypes.c_uint64), ("userspace_addr", ctypes.c_uint64),
                ("guest_memfd_offset", ctypes.c_uint64), ("guest_memfd", ctypes.c_uint32),
                ("pad1", ctypes.c_uint32), ("pad2", ctypes.c_uint64 * 14)]


class CreateGuestMemfd(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("reserved", ctypes.c_uint64 * 6)]


class EnableCap(ctypes.Structure):
    _fields_ = [("cap", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("args", ctypes.c_uint64 * 4),
                ("pad", ctypes.c_uint8 * 64)]


class VcpuInit(ctypes.Structure):
    _fields_ = [("target", ctypes.c_uint32), ("features", ctypes.c_uint32 * 7)]


class OneReg(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint64), ("addr", ctypes.c_uint64)]


class CreateDevice(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("fd", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class DeviceAttr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32), ("group", ctypes.c_uint32), ("attr", ctypes.c_uint64),
                ("addr", ctypes.c_uint64)]


class DirtyLog(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("bitmap", ctypes.c_uint64)]


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (KVMIO << 8) | nr


KVM_GET_API_VERSION = _io(0x00)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_CREATE_DEVICE = _iowr(0xE0, ctypes.sizeof(CreateDevice))
KVM_SET_DEVICE_ATTR = _iow(0xE1, ctypes.sizeof(DeviceAttr))
KVM_CREATE_VM = _io(0x01)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_CREATE_VCPU = _io(0x41)
KVM_GET_DIRTY_LOG = _iow(0x42, ctypes.sizeof(DirtyLog))
KVM_SET_USER_MEMORY_REGION = _iow(0x46, ctypes.sizeof(UserspaceMemoryRegion))
KVM_SET_USER_MEMORY_REGION2 = _iow(0x49, ctypes.sizeof(UserspaceMemoryRegion2))
KVM_CREATE_GUEST_MEMFD = _iowr(0xD4, ctypes.sizeof(CreateGuestMemfd))
KVM_ENABLE_CAP = _iow(0xA3, ctypes.sizeof(EnableCap))
KVM_RUN = _io(0x80)
KVM_SET_ONE_REG = _iow(0xAC, ctypes.sizeof(OneReg))
KVM_ARM_VCPU_INIT = _iow(0xAE, ctypes.sizeof(VcpuInit))
KVM_ARM_PREFERRED_TARGET = _ior(0xAF, ctypes.sizeof(VcpuInit))

KVM_MEM_LOG_DIRTY_PAGES = 1
KVM_MEM_GUEST_MEMFD = 1 << 2
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE = 228
#: guest_memfd the VMM can mmap, its memory shared (not private) from creation: what a
#: memslot of an ordinary arm64 VM needs (kvm_arch_prepare_memory_region: gmem-only)
GUEST_MEMFD_FLAG_MMAP, GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 0, 1 << 1
KVM_ARM_VCPU_POWER_OFF = 0
KVM_ARM_VCPU_PSCI_0_2 = 2
KVM_ARM_VCPU_HAS_EL2 = 7
KVM_CAP_ARM_EL2 = 240
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL = 0, 4
KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST = 2, 3
KVM_DEV_ARM_VGIC_CTRL_INIT = 0
#: Where a nested probe's vGICv3 sits in the guest's IPA space (QEMU virt's addresses;
#: nothing in the payloads touches it, but KVM needs it before an EL2 vCPU runs).
GICD_BASE, GICR_BASE = 0x0800_0000, 0x080A_0000

KVM_EXIT_MMIO = 6
KVM_EXIT_INTR = 10
KVM_EXIT_SYSTEM_EVENT = 24
EXIT_NAMES = {0: "UNKNOWN", 1: "EXCEPTION", 4: "DEBUG", 6: "MMIO", 8: "SHUTDOWN", 9: "FAIL_ENTRY",
              10: "INTR", 17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT", 28: "ARM_NISV"}
SYSTEM_EVENTS = {1: "shutdown", 2: "reset", 3: "crash"}

# struct kvm_run: exit_reason at 8; the exit union at 32.
RUN_EXIT_REASON = 8
RUN_MMIO = 32  # u64 phys_addr; u8 data[8]; u32 len; u8 is_write

# KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset in struct kvm_regs) / 4
_CORE = 0x6000000000000000 | 0x0030000000000000 | 0x0010 << 16
REG_PC = _CORE | (32 * 8 // 4)  # regs[31], sp, then pc

# mmap and madvise (arm64 uses the generic values)
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_NORESERVE, MAP_HUGETLB, MAP_HUGE_SHIFT = 0x4000, 0x40000, 26

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_FAILED = ctypes.c_void_p(-1).value


def _check(result: int, what: str) -> int:
    if result == -1 or result == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mmap_at(addr: int, size: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    return _check(libc.mmap(addr or None, size, prot, flags, fd, offset), "mmap")


def munmap(addr: int, size: int) -> None:
    _check(libc.munmap(addr, size), "munmap")


def madvise(addr: int, size: int, advice: str) -> None:
    _check(libc.madvise(addr, size, MADV[advice]), f"madvise({advice})")


def mprotect(addr: int, size: int, prot: int) -> None:
    _check(libc.mprotect(addr, size, prot), "mprotect")


class Unsupported(RuntimeError):
    """This kernel's KVM lacks what the scenario is about: the scenario is n/a here."""


class Memory:
    """One memslot's host memory: `size` bytes of `backing` at an address `offset` bytes
    past a boundary of `align` (the block size, or the huge page size if larger). A
    guest_memfd backing is made by the VM it is for (`vm`)."""

    def __init__(self, backing: str, size: int, offset: int = 0, align: int = 2 * MiB, vm: "VM | None" = None):
        if backing not in BACKINGS:
            raise ValueError(f"unknown backing {backing!r}; known: {', '.join(BACKINGS)}")
        spec = BACKINGS[backing]
        kind, advice, huge = spec.kind, spec.advice, spec.huge
        self.backing, self.size, self.offset, self.fd = backing, size, offset, -1
        self.huge = huge
        align = max(align, huge, PMD)
        # Reserve address space, then place the mapping at the chosen alignment inside it.
        reserve = mmap_at(0, size + 2 * align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
        start = (reserve + align - 1) // align * align + offset
        munmap(reserve, size + 2 * align)
        prot = PROT_READ | PROT_WRITE
        if kind == "anonymous":
            flags = MAP_PRIVATE | MAP_ANONYMOUS
        elif kind == "shmem":
            flags = MAP_SHARED | MAP_ANONYMOUS
        elif kind == "memfd":
            self.fd = os.memfd_create(f"kvmlab-{backing}", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, size)
            flags = MAP_SHARED
        elif kind == "pfnmap":
            self.fd = open_device_memory(size)
            flags = MAP_SHARED
        elif kind == "guest_memfd":
            if vm is None:
                raise ValueError("a guest_memfd backing is made by its VM")
            self.fd = vm.create_guest_memfd(size)
            flags = MAP_SHARED
        else:  # hugetlb: the page size is in the mmap flags
            flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (huge.bit_length() - 1) << MAP_HUGE_SHIFT
        self.addr = mmap_at(start, size, prot, flags | MAP_FIXED, self.fd)
        self._prot, self._flags, self._advice = prot, flags, advice
        if advice:
            madvise(self.addr, size, advice)

    def remap(self, addr: int, length: int) -> None:
        """munmap a piece, then map it again in place, as it was (empty for anonymous
        memory; the same file pages for a memfd). Between the two, a fault there finds no VMA."""
        munmap(addr, length)
        mmap_at(addr, length, self._prot, self._flags | MAP_FIXED, self.fd, addr - self.addr if self.fd >= 0 else 0)
        if self._advice:
            madvise(addr, length, self._advice)

    def alias(self, offset: int) -> int:
        """A second mapping of the same memfd, `offset` bytes past a PMD boundary (2 MiB)."""
        if self.fd < 0:
            raise ValueError(f"a second mapping needs a memfd backing, not {self.backing}")
        reserve = mmap_at(0, self.size + 2 * PMD, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
        start = (reserve + PMD - 1) // PMD * PMD + offset
        munmap(reserve, self.size + 2 * PMD)
        return mmap_at(start, self.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, self.fd)


#: The lab's device memory (lab.device_memory): QEMU's ivshmem-plain, BAR 2.
IVSHMEM = ("0x1af4", "0x1110")


class NoDeviceMemory(RuntimeError):
    """The lab has no device memory (lab.device_memory: 0), or less than asked: a skip."""


def open_device_memory(size: int) -> int:
    """An fd whose mmap is the lab's PCI BAR (a VM_PFNMAP | VM_IO mapping of memory outside
    L1's RAM), with the device's memory decoding turned on."""
    base = "/sys/bus/pci/devices"
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name)
        try:
            ids = tuple(open(os.path.join(path, f)).read().strip() for f in ("vendor", "device"))
        except OSError:
            continue
        if ids != IVSHMEM:
            continue
        bar = os.path.join(path, "resource2")
        have = os.stat(bar).st_size
        if have < size:
            raise NoDeviceMemory(f"the lab's device memory is {have >> 20} MiB, the memslot asks {size >> 20} MiB "
                                 "(lab.device_memory)")
        with open(os.path.join(path, "enable"), "w") as f:  # memory decoding on
            f.write("1")
        return os.open(bar, os.O_RDWR | os.O_SYNC | os.O_CLOEXEC)
    raise NoDeviceMemory("the lab has no device memory (lab.device_memory: 0); give it some, e.g. 64M")


def ioctl(fd: int, request: int, arg=0) -> int:
    while True:
        try:
            return fcntl.ioctl(fd, request, arg)
        except InterruptedError:
            continue


class VM:
    def __init__(self, el2: bool = False):
        self.kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        #: vCPUs with KVM_ARM_VCPU_HAS_EL2: they reset into EL2h, a guest hypervisor's
        self.el2 = el2
        if el2 and ioctl(self.kvm, KVM_CHECK_EXTENSION, KVM_CAP_ARM_EL2) <= 0:
            raise RuntimeError("L1's KVM cannot run a guest hypervisor (KVM_CAP_ARM_EL2 is 0): a nested "
                               "scenario needs a lab brought up with --kvm-mode nested")
        self.fd = ioctl(self.kvm, KVM_CREATE_VM, 0)
        self.run_size = ioctl(self.kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
        self.slots: dict[int, UserspaceMemoryRegion] = {}
        self.gmem: dict[int, int] = {}
        self.vgic = -1

    def create_vgic_v3(self) -> None:
        """An in-kernel GICv3 (after every vCPU exists): KVM gives an EL2 vCPU its
        maintenance interrupt from it before the first KVM_RUN (kvm_vgic_vcpu_nv_init)."""
        device = CreateDevice(KVM_DEV_TYPE_ARM_VGIC_V3, 0, 0)
        ioctl(self.fd, KVM_CREATE_DEVICE, device)
        self.vgic = device.fd
        for kind, base in ((KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_BASE), (KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_BASE)):
            holder = ctypes.c_uint64(base)
            ioctl(self.vgic, KVM_SET_DEVICE_ATTR,
                  DeviceAttr(0, KVM_DEV_ARM_VGIC_GRP_ADDR, kind, ctypes.addressof(holder)))
        ioctl(self.vgic, KVM_SET_DEVICE_ATTR, DeviceAttr(0, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, 0))

    def set_eager_split(self, chunk: int) -> None:
        """KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE (6.4+; before any memslot exists): dirty
        logging turned on splits the memslot's blocks into pages at once."""
        args = EnableCap(KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE, 0)
        args.args[0] = chunk
        try:
            ioctl(self.fd, KVM_ENABLE_CAP, args)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise Unsupported("this kernel's KVM has no eager page splitting "
                                  "(KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE refused: 6.4+)") from None
            raise

    def create_guest_memfd(self, size: int) -> int:
        """A guest_memfd of `size` bytes the VMM can mmap (KVM_CREATE_GUEST_MEMFD)."""
        if ioctl(self.kvm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD) <= 0:
            raise Unsupported("this kernel's KVM has no guest_memfd (KVM_CAP_GUEST_MEMFD is 0)")
        args = CreateGuestMemfd(size, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)
        try:
            return ioctl(self.fd, KVM_CREATE_GUEST_MEMFD, args)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # the flags: guest_memfd without mmap (6.8 to 6.17)
                raise Unsupported("this kernel's guest_memfd cannot be mmapped (GUEST_MEMFD_FLAG_MMAP refused), "
                                  "which an ordinary arm64 VM's memslot needs") from None
            raise

    def set_memslot(self, slot: int, ipa: int, size: int, addr: int, dirty_log: bool = False,
                    gmem_fd: int = -1) -> None:
        flags = KVM_MEM_LOG_DIRTY_PAGES if dirty_log else 0
        if gmem_fd >= 0:
            ioctl(self.fd, KVM_SET_USER_MEMORY_REGION2,
                  UserspaceMemoryRegion2(slot, flags | KVM_MEM_GUEST_MEMFD, ipa, size, addr, 0, gmem_fd))
        else:
            ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, UserspaceMemoryRegion(slot, flags, ipa, size, addr))
        self.slots[slot] = UserspaceMemoryRegion(slot, flags, ipa, size, addr)
        self.gmem[slot] = gmem_fd

    def set_dirty_log(self, slot: int, on: bool) -> None:
        old = self.slots[slot]
        self.set_memslot(slot, old.guest_phys_addr, old.memory_size, old.userspace_addr, on, self.gmem[slot])

    def dirty_pages(self, slot: int) -> int:
        """KVM_GET_DIRTY_LOG: pages written since logging started (or since the last call)."""
        pages = self.slots[slot].memory_size // PAGE
        bitmap = ctypes.create_string_buffer((pages + 63) // 64 * 8)
        ioctl(self.fd, KVM_GET_DIRTY_LOG, DirtyLog(slot, 0, ctypes.addressof(bitmap)))
        return sum(bin(b).count("1") for b in bitmap.raw)

    def vcpu(self, index: int, powered_off: bool) -> "Vcpu":
        return Vcpu(self, index, powered_off)


class Vcpu:
    def __init__(self, vm: VM, index: int, powered_off: bool):
        self.index = index
        self.fd = ioctl(vm.fd, KVM_CREATE_VCPU, index)
        init = VcpuInit()
        ioctl(vm.fd, KVM_ARM_PREFERRED_TARGET, init)
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2
        if vm.el2:
            init.features[0] |= 1 << KVM_ARM_VCPU_HAS_EL2
        if powered_off:
            init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF
        ioctl(self.fd, KVM_ARM_VCPU_INIT, init)
        self.run_page = mmap.mmap(self.fd, vm.run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def set_reg(self, reg: int, value: int) -> None:
        holder = ctypes.c_uint64(value)
        ioctl(self.fd, KVM_SET_ONE_REG, OneReg(reg, ctypes.addressof(holder)))

    def run(self) -> int:
        """KVM_RUN once; returns the exit reason (EINTR counts as KVM_EXIT_INTR)."""
        try:
            fcntl.ioctl(self.fd, KVM_RUN, 0)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return KVM_EXIT_INTR
            raise
        return struct.unpack_from("<I", self.run_page, RUN_EXIT_REASON)[0]

    def mmio(self) -> tuple[int, int, bool, int]:
        """(IPA, length, is_write, value written) of the MMIO exit."""
        phys, data, length, is_write = struct.unpack_from("<Q8sIB", self.run_page, RUN_MMIO)
        return phys, length, bool(is_write), int.from_bytes(data[:length], "little")

    def mmio_answer(self, value: int, length: int) -> None:
        self.run_page[RUN_MMIO + 8:RUN_MMIO + 8 + length] = value.to_bytes(length, "little")

    def system_event(self) -> str:
        kind = struct.unpack_from("<I", self.run_page, RUN_MMIO)[0]
        return SYSTEM_EVENTS.get(kind, f"type {kind}")
