"""The probe VMM: a minimal KVM VMM for what QEMU cannot set up.

It places memslots at exact IPAs and host addresses (co-alignment offsets, sizes that are
not a multiple of 2 MiB), backs them any way in lab.shared.contract.BACKINGS, runs the touch payload on
one or more vCPUs, and does the scenario's VMM actions (lab.shared.contract.ACTIONS) at
set points:

    start      after the memslots exist, before any vCPU runs
    pause N    when the guest reaches its N-th pause (between two passes)
    end        after the guest has powered off

Actions: prefault, dirty_log, dirty_pages, madvise, mprotect, munmap, fork_child, alias,
smaps, sleep, churn (a thread repeating madvise / mprotect / munmap / remap while the
vCPUs run). At every pause the probe writes "kvmlab: phase N" to trace_marker, so the
trace itself says which faults came after which action.

Input: a ProbeJob (lab/shared/contract.py, written by the host). Output: a JSON report.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Iterator

from lab.shared.contract import Action, Op, ProbeJob, ProbeReport, decode
from lab.shared.files import write_json

from . import kvm, mm

UART_DR, UART_FR = 0x00, 0x18
FR_RXFE, FR_TXFE = 0x10, 0x80

TRACE_MARKER = "/sys/kernel/tracing/trace_marker"
#: The guest hypervisor's per-vCPU report, in gh.S's order (R_*).
L2_REPORT = ("hvcs", "s2_aborts", "esr", "far", "hpfar", "unexpected", "l3_pc", "l3_ctx", "psci_ret",
             "entered", "tlbis")


def marker(text: str) -> None:
    try:
        with open(TRACE_MARKER, "w") as f:
            f.write(text + "\n")
    except OSError:
        pass


def smaps_for(addr: int) -> dict[str, int]:
    """The /proc/self/smaps entry of the mapping containing addr (sizes in KiB)."""
    found: dict[str, int] = {}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                if inside:
                    break
                inside = lo <= addr < hi
                if inside:
                    found["start"], found["end"] = lo, hi
            elif inside and len(head) >= 2 and head[0].endswith(":") and head[1].isdigit():
                found[head[0][:-1]] = int(head[1])
    return found


def vmstat() -> dict[str, int]:
    """The THP and compaction counters of /proc/vmstat (l1/mm.py reads them)."""
    return mm.vmstat("thp_", "nr_anon_transparent", "nr_shmem_hugepages", "compact_")


class Probe:
    def __init__(self, job: ProbeJob):
        self.job = job
        self.report: ProbeReport = {"uart": "", "pauses": 0, "actions": [], "dirty_pages": {},
                                       "smaps": {}, "exits": {}, "events": []}
        self.vmstat_before = vmstat()
        self.vm = kvm.VM(el2=job.el2 is not None)
        self.memory: dict[int, kvm.Memory] = {}
        self.children: list[int] = []
        self.done = threading.Event()
        self.error: str | None = None
        self.lock = threading.Lock()
        self.pending_pause = False
        self.answered = False
        self.remapping = False
        started = time.monotonic()
        if job.eager_split:
            self.vm.set_eager_split(job.eager_split)
        for slot in job.memslots:
            mem = kvm.Memory(slot.backing, slot.size, slot.offset, vm=self.vm)
            self.memory[slot.slot] = mem
            self.vm.set_memslot(slot.slot, slot.ipa, slot.size, mem.addr, slot.dirty_log,
                                mem.fd if mem.backing == "guest_memfd" else -1)
        # The payload: its own small anonymous memslot (slot 0).
        code = open(job.payload, "rb").read()
        code_size = max(64 * 1024, (len(code) + 0xFFFF) // 0x10000 * 0x10000)
        if job.el2 is not None:  # the guest hypervisor, with L3's code and L2's stage-2 tables beside it
            code_size = job.el2.memory
        self.code = kvm.Memory("anonymous_nothp", code_size, 0)
        ctypes_memmove(self.code.addr, code)
        for blob in job.el2.blobs if job.el2 is not None else []:
            data = open(blob.path, "rb").read()
            if blob.offset < len(code) or blob.offset + len(data) > code_size:
                raise ValueError(f"{blob.path}: {len(data)} bytes at {blob.offset:#x} do not fit the payload's memslot")
            ctypes_memmove(self.code.addr + blob.offset, data)
        self.vm.set_memslot(0, job.code_ipa, code_size, self.code.addr)
        self.vcpus = [self.vm.vcpu(i, powered_off=i > 0) for i in range(job.vcpus)]
        if job.el2 is not None:
            self.vm.create_vgic_v3()
        self.vcpus[0].set_reg(kvm.REG_PC, job.code_ipa)
        self.report["setup_seconds"] = round(time.monotonic() - started, 3)
        self.report["memslots"] = [
            {"slot": s.slot, "ipa": s.ipa, "size": s.size, "backing": s.backing,
             "userspace_addr": self.memory[s.slot].addr} for s in job.memslots]

    # -- actions -------------------------------------------------------------------------
    def actions_at(self, point: str) -> None:
        el2 = self.job.el2
        if el2 is not None and el2.remap is not None and el2.remap_at == point:
            # L2 remaps its stage-2: its new tables in place, before L3 resumes and asks L2
            # to invalidate (gh.S, KVMLAB_L2_TLBI)
            data = open(el2.remap.path, "rb").read()
            if el2.remap.offset + len(data) > el2.memory:
                raise ValueError(f"{el2.remap.path}: {len(data)} bytes do not fit the payload's memslot")
            ctypes_memmove(self.code.addr + el2.remap.offset, data)
            self.report["actions"].append({"at": point, "do": "l2_remap", "seconds": 0})
        for action in self.job.actions:
            if action.at == point:
                started = time.monotonic()
                self.do(action)
                self.report["actions"].append({"at": point, "do": action.do,
                                               "seconds": round(time.monotonic() - started, 3)})

    def do(self, action: Action) -> None:
        what = action.do
        if what == "smaps":
            self.report["smaps"][action.label] = self.smaps()
            return
        if what == "sleep":
            time.sleep(action.seconds if action.seconds is not None else 1)
            return
        if what == "segfault":
            import ctypes

            ctypes.string_at(0)  # SIGSEGV: kvmlab's crash evidence, checked on a planted crash
        mem = self.memory[action.slot]  # the host checked that the memslot exists
        if what == "prefault":
            touch = ctypes_memset_1 if action.access == "write" else read_pages
            for addr, length in ranges(action.as_op(), mem):
                touch(addr, length)
        elif what == "dirty_log":
            self.vm.set_dirty_log(action.slot, action.on)
        elif what == "dirty_pages":
            self.report["dirty_pages"].setdefault(str(action.slot), []).append(self.vm.dirty_pages(action.slot))
        elif what in ("madvise", "mprotect", "munmap"):
            apply_ops([action.as_op()], mem)
        elif what == "fork_child":
            self.fork_child(action, mem)
        elif what == "alias":
            addr = mem.alias(action.offset if action.offset is not None else 4096)
            if action.access == "write":
                ctypes_memset(addr, 2, mem.size)
            else:
                read_pages(addr, mem.size)
            self.report["alias"] = {"addr": addr, "smaps": smaps_for(addr)}
        elif what == "churn":
            threading.Thread(target=self.churn, args=(action, mem), daemon=True).start()
        elif what in ("collapse", "khugepaged", "compact", "split", "move_pages"):
            self.mm_action(action, mem)
        else:
            raise ValueError(f"action {what!r} is not one the probe does")

    def mm_action(self, action: Action, mem: kvm.Memory) -> None:
        """L1's mm at work on the VM's memory (l1/mm.py); what it did kept in probe.json."""
        what = action.do
        if what == "khugepaged":
            record = mm.khugepaged(action.seconds if action.seconds is not None else 60)
        elif what == "compact":
            record = mm.compact()
        else:
            record = {"pieces": []}
            for addr, length in ranges(action.as_op(), mem):
                if what == "move_pages":
                    done = mm.move_pages(addr, length, action.node)
                else:
                    done = (mm.collapse if what == "collapse" else mm.split)(addr, length)
                record["pieces"].append({"addr": addr, "length": length, **done})
        self.report.setdefault("mm", []).append({"at": action.at, "do": what, **record})

    def fork_child(self, action: Action, mem: kvm.Memory) -> None:
        """A child process changes its own copy of the mapping; it stays alive (holding
        its mappings) until the probe ends."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                apply_ops(action.ops, mem)
                os.write(write_fd, b"ok")
                while True:
                    time.sleep(3600)
            finally:
                os._exit(0)
        os.close(write_fd)
        answer = os.read(read_fd, 2)
        os.close(read_fd)
        self.children.append(pid)
        if answer != b"ok":
            raise RuntimeError("the forked child failed to change its mapping")

    def churn(self, action: Action, mem: kvm.Memory) -> None:
        """Another VMM thread changing the memory under the vCPUs, round after round:
        `op` (madvise, mprotect, munmap, remap) or a list `ops`, one per round in turn."""
        ops = action.ops or [action.as_op()]
        if any(op.op in ("munmap", "remap") for op in ops):
            self.remapping = True  # vCPUs faulting on a hole get EFAULT: they try again
        count = 0
        while not self.done.is_set():
            apply_ops([ops[count % len(ops)]], mem)
            count += 1
            self.report["churn_rounds"] = count

    def smaps(self) -> dict[str, Any]:
        return {str(slot): smaps_for(mem.addr) for slot, mem in self.memory.items()}

    def folios(self) -> dict[str, dict[str, int]]:
        """Each memslot's memory by folio size (l1/mm.py), where L1 lets us read it."""
        try:
            return {str(slot): mm.folios(mem.addr, mem.size) for slot, mem in self.memory.items()}
        except OSError:
            return {}

    def l2_reports(self) -> list[dict[str, int]]:
        """What the guest hypervisor counted per vCPU (images/l2/gh.S, R_*: 128 bytes each)."""
        import ctypes
        import struct

        assert self.job.el2 is not None
        raw = ctypes.string_at(self.code.addr + self.job.el2.report, 128 * len(self.vcpus))
        return [dict(zip(L2_REPORT, struct.unpack_from(f"<{len(L2_REPORT)}Q", raw, 128 * i)))
                for i in range(len(self.vcpus))]

    # -- running -------------------------------------------------------------------------
    def vcpu_loop(self, vcpu: kvm.Vcpu, start: threading.Barrier) -> None:
        uart = self.job.uart
        try:
            start.wait()
            while not self.done.is_set():
                try:
                    reason = vcpu.run()
                except OSError as exc:
                    if exc.errno == errno.EFAULT and self.remapping:
                        self.report["efault_retries"] = self.report.get("efault_retries", 0) + 1
                        continue
                    raise
                self.report["exits"][kvm.EXIT_NAMES.get(reason, str(reason))] = \
                    self.report["exits"].get(kvm.EXIT_NAMES.get(reason, str(reason)), 0) + 1
                if reason == kvm.KVM_EXIT_MMIO:
                    phys, length, is_write, value = vcpu.mmio()
                    if phys == uart + UART_DR and is_write:
                        with self.lock:
                            self.report["uart"] += chr(value & 0xFF)
                            if self.report["uart"].endswith("kvmlab-touch: pause\n"):
                                self.pending_pause = True
                    elif phys == uart + UART_FR and not is_write:
                        vcpu.mmio_answer(self.flag_register(), length)
                    elif phys == uart + UART_DR:
                        vcpu.mmio_answer(ord("g"), length)
                    else:
                        raise RuntimeError(f"vCPU {vcpu.index}: MMIO {'write' if is_write else 'read'} "
                                           f"at IPA {phys:#x} outside every memslot")
                elif reason == kvm.KVM_EXIT_SYSTEM_EVENT:
                    self.report["system_event"] = vcpu.system_event()
                    self.done.set()
                elif reason != kvm.KVM_EXIT_INTR:
                    raise RuntimeError(f"vCPU {vcpu.index}: unexpected exit {kvm.EXIT_NAMES.get(reason, reason)}")
        except Exception as exc:  # reported, and the run ends
            self.error = f"{type(exc).__name__}: {exc}"
            self.done.set()

    def flag_register(self) -> int:
        """The guest polls FR after a pause: run that pause's actions, then say 'byte ready'."""
        if self.pending_pause:
            self.pending_pause = False
            self.report["pauses"] += 1
            n = self.report["pauses"]
            marker(f"kvmlab: pause {n}")
            self.actions_at(f"pause {n}")
            marker(f"kvmlab: phase {n}")
            return FR_TXFE
        return FR_TXFE

    def run(self, timeout: float) -> ProbeReport:
        self.actions_at("start")
        marker("kvmlab: phase 0")
        started = time.monotonic()
        # Every vCPU thread exists before any enters the guest: a thread's start maps its
        # stack and mprotects its guard page, and before 5.13 any such change to the VMM's
        # mm, in a memslot or not, makes a stage-2 fault in flight retry (mmu_notifier_count
        # and _seq, virt/kvm/kvm_main.c), which counts as an extra fault.
        start = threading.Barrier(len(self.vcpus) + 1)
        threads = [threading.Thread(target=self.vcpu_loop, args=(v, start), daemon=True) for v in self.vcpus]
        for t in threads:
            t.start()
        start.wait()
        if not self.done.wait(timeout):
            self.error = f"the guest did not power off within {timeout:g} s"
        self.report["guest_seconds"] = round(time.monotonic() - started, 3)
        marker("kvmlab: end")
        if self.error is None:
            self.actions_at("end")
        self.report["smaps"]["end"] = self.smaps()
        if self.job.folios:
            self.report["folios"] = self.folios()
        # (a nested run's faults are L3's, in the shadow MMUs: its own table maps L2)
        stage2 = stage2_dump(self.vm.fd) if self.job.el2 is None else None
        if stage2 is not None:
            self.report["stage2"] = stage2
        if self.job.el2 is not None:
            self.report["l2"] = self.l2_reports()
            dumps = shadow_dumps(self.vm.fd)
            if dumps is not None:
                self.report["shadow_s2"] = dumps
        after = vmstat()
        self.report["vmstat"] = {k: after[k] - self.vmstat_before.get(k, 0) for k in after}
        self.report["error"] = self.error
        for pid in self.children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return self.report


#: KVM's debugfs, where the kernel has CONFIG_PTDUMP_STAGE2_DEBUGFS (6.12+; shadow MMUs 7.1+)
KVM_DEBUGFS = "/sys/kernel/debug/kvm"
#: a bound on each dump read (a shadow MMU over 1 GiB of 4 KiB pages is ~40 KiB of text)
DUMP_BOUND = 4 << 20


def stage2_dump(vm_fd: int) -> str | None:
    """This VM's own stage-2 table as KVM dumps it (CONFIG_PTDUMP_STAGE2_DEBUGFS, 6.12+);
    None where the kernel has no such file."""
    try:
        with open(os.path.join(KVM_DEBUGFS, f"{os.getpid()}-{vm_fd}", "stage2_page_tables")) as f:
            return f.read(DUMP_BOUND)
    except OSError:
        return None


def shadow_dumps(vm_fd: int) -> dict[str, str] | None:
    """Every enabled shadow MMU's stage-2 dump of this VM, by file name; None where the
    kernel has no such dump (lab/analysis/ptdump.py reads them)."""
    nested = os.path.join(KVM_DEBUGFS, f"{os.getpid()}-{vm_fd}", "nested")
    try:
        names = sorted(n for n in os.listdir(nested) if n.endswith("-s2-enabled"))
    except OSError:
        return None
    dumps = {}
    for name in names:
        try:
            with open(os.path.join(nested, name)) as f:
                dumps[name] = f.read(DUMP_BOUND)
        except OSError as exc:
            dumps[name] = f"unreadable: {exc}"
    return dumps


def ranges(op: Op, mem: kvm.Memory) -> Iterator[tuple[int, int]]:
    """(address, length) pieces an operation applies to: [offset, offset+size) of the
    memslot, or `size` bytes at every `every` bytes."""
    size = op.size if op.size is not None else mem.size - op.offset
    if op.every:
        for at in range(op.offset, mem.size, op.every):
            yield mem.addr + at, min(size, mem.size - at)
    else:
        yield mem.addr + op.offset, size


def apply_ops(ops: list[Op], mem: kvm.Memory) -> None:
    for op in ops:
        for addr, length in ranges(op, mem):
            if op.op == "madvise":
                assert op.advice is not None  # the contract requires it
                kvm.madvise(addr, length, op.advice)
            elif op.op == "mprotect":
                prot = {"none": kvm.PROT_NONE, "read": kvm.PROT_READ,
                        "write": kvm.PROT_READ | kvm.PROT_WRITE}[op.prot]
                kvm.mprotect(addr, length, prot)
            elif op.op == "munmap":
                kvm.munmap(addr, length)
            elif op.op == "remap":
                mem.remap(addr, length)
            else:
                raise ValueError(f"unknown memory operation {op.op!r}")


def ctypes_memset_1(addr: int, length: int) -> None:
    ctypes_memset(addr, 1, length)


def ctypes_memset(addr: int, value: int, length: int) -> None:
    import ctypes

    ctypes.memset(addr, value, length)


def ctypes_memmove(addr: int, data: bytes) -> None:
    import ctypes

    ctypes.memmove(addr, data, len(data))


def read_pages(addr: int, length: int) -> None:
    try:
        kvm.madvise(addr, length, "populate_read")  # 5.14 and later
        return
    except OSError:
        pass
    import ctypes

    for at in range(addr, addr + length, kvm.PAGE):
        ctypes.c_char.from_address(at).value


def load(path: str) -> ProbeJob:
    with open(path) as f:
        return decode(ProbeJob, json.load(f), "probe-job")


def run(job: ProbeJob) -> int:
    """One probe VMM run of `job`: the report written, 0 if the guest ran to its end."""
    try:
        probe = Probe(job)
    except kvm.Unsupported as exc:  # n/a on this kernel: said, not an error
        write_json(job.report, {"na": str(exc), "error": None}, indent=1, atomic=False)
        return 0
    except kvm.NoDeviceMemory as exc:  # the lab lacks the resource: a skip
        write_json(job.report, {"skip": str(exc), "error": None}, indent=1, atomic=False)
        return 0
    report = probe.run(job.timeout)
    write_json(job.report, report, indent=1, atomic=False)
    return 0 if report["error"] is None else 1


def main(argv: list[str]) -> int:
    return run(load(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
