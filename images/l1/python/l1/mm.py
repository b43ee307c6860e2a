"""What L1's memory management does to a running VM's memory, on a scenario's cue: the
probe's `collapse`, `khugepaged`, `compact` and `split` actions (lab/shared/actions.py).

Each returns a small record of what it did and what L1 counted (vmstat, khugepaged's
counters), which the probe keeps in probe.json beside the action: a verdict that finds
no block after a collapse can then say whether the collapse happened at all.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Any

from . import kvm

THP = "/sys/kernel/mm/transparent_hugepage"
KHUGEPAGED = f"{THP}/khugepaged"
COMPACT = "/proc/sys/vm/compact_memory"
#: debugfs (mounted by L1's initramfs). From 5.13 it takes "PID,START,END"; before, only
#: "1": every THP of the system is split.
SPLIT = "/sys/kernel/debug/split_huge_pages"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: Any) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def vmstat(*prefixes: str) -> dict[str, int]:
    out = {}
    with open("/proc/vmstat") as f:
        for line in f:
            key, value = line.split()
            if key.startswith(prefixes):
                out[key] = int(value)
    return out


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


#: MADV_COLLAPSE's EAGAIN is "a transient condition; trying again might succeed" (a page
#: locked, off the LRU or with a passing extra reference: madvise_collapse_errno() in
#: mm/khugepaged.c). Seen once on 7.2, in collapse-between-passes (one matrix run of two).
COLLAPSE_TRIES = 5


def collapse(addr: int, length: int) -> dict[str, Any]:
    """MADV_COLLAPSE (6.1+): the range's pages collapsed into huge pages now, by this
    thread, whatever khugepaged's settings; tried again after EAGAIN, up to COLLAPSE_TRIES
    times in all (the retries are in the record). Raises OSError (EINVAL before 6.1;
    ENOMEM, or EAGAIN every time, when a huge page could not be made) with the kernel's
    word for it."""
    before = vmstat("thp_")
    retries = 0
    while True:
        try:
            kvm.madvise(addr, length, "collapse")
            break
        except OSError as exc:
            if exc.errno != errno.EAGAIN or retries + 1 >= COLLAPSE_TRIES:
                raise
            retries += 1
            time.sleep(0.05)
    record: dict[str, Any] = {"vmstat": _delta(before, vmstat("thp_"))}
    if retries:
        record["eagain_retries"] = retries
    return record


def khugepaged(wait: float) -> dict[str, Any]:
    """khugepaged made to scan at once and without pause until it has been twice through
    every mm it tracks (so this VMM's ranges were scanned after the call), or `wait`
    seconds; its settings then put back as they were (parked, unless the scenario let it
    run). The range must be eligible: THP "always", or MADV_HUGEPAGE under "madvise"."""
    knobs = {"pages_to_scan": 65536, "alloc_sleep_millisecs": 0, "scan_sleep_millisecs": 0}
    saved = {name: _read(f"{KHUGEPAGED}/{name}") for name in knobs}
    counters = ("full_scans", "pages_collapsed")
    before = {name: int(_read(f"{KHUGEPAGED}/{name}")) for name in counters}
    thp = vmstat("thp_collapse")
    started = time.monotonic()
    try:
        for name, value in knobs.items():  # scan_sleep last: writing it wakes khugepaged
            _write(f"{KHUGEPAGED}/{name}", value)
        while int(_read(f"{KHUGEPAGED}/full_scans")) < before["full_scans"] + 2:
            if time.monotonic() - started > wait:
                raise TimeoutError(f"khugepaged did not finish two full scans within {wait:g} s")
            time.sleep(0.05)
    finally:
        for name in knobs:
            _write(f"{KHUGEPAGED}/{name}", saved[name])
    after = {name: int(_read(f"{KHUGEPAGED}/{name}")) for name in counters}
    return {"seconds": round(time.monotonic() - started, 3), "vmstat": _delta(thp, vmstat("thp_collapse")),
            **{name: after[name] - before[name] for name in counters}}


def compact() -> dict[str, Any]:
    """Every zone of L1 compacted (/proc/sys/vm/compact_memory), synchronously."""
    before = vmstat("compact_", "thp_migration", "pgmigrate")
    _write(COMPACT, 1)
    return {"vmstat": _delta(before, vmstat("compact_", "thp_migration", "pgmigrate"))}


def split(addr: int, length: int) -> dict[str, Any]:
    """The huge pages of this process's range split into 4 KiB pages (still mapped, by
    PTEs) through debugfs; before 5.13, every THP in L1. Raises OSError where debugfs has
    no split_huge_pages (a kernel without CONFIG_DEBUG_FS or THP)."""
    before = vmstat("thp_split")
    how = "range"
    try:
        _write(SPLIT, f"{os.getpid()},{addr:#x},{addr + length:#x}")
    except OSError as exc:
        if exc.errno != 22:  # EINVAL: a kernel before 5.13, which only splits them all
            raise
        _write(SPLIT, 1)
        how = "every THP in L1 (this kernel's split_huge_pages takes no range)"
    return {"how": how, "vmstat": _delta(before, vmstat("thp_split"))}


#: move_pages(2) on arm64 (include/uapi/asm-generic/unistd.h), MPOL_MF_MOVE
NR_MOVE_PAGES, MPOL_MF_MOVE = 239, 1 << 1


def numa_nodes() -> list[int]:
    """L1's NUMA nodes with memory (/sys/devices/system/node/has_normal_memory)."""
    try:
        text = _read("/sys/devices/system/node/has_normal_memory")
    except OSError:
        return [0]
    nodes: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        nodes += range(int(lo), int(hi or lo) + 1)
    return nodes or [0]


def move_pages(addr: int, length: int, node: int | None) -> dict[str, Any]:
    """move_pages(2) every page of this process's range to `node` (None: each page to the
    next node after its own, so that every page moves), as the kernel migrates them (a THP
    as a whole, where it can: thp_migration_success). Returns where the pages were and are, by node,
    and the migration counters' deltas; `moved` false, with why, when L1 has one node."""
    import ctypes

    nodes = numa_nodes()
    count = length // kvm.PAGE
    pages = (ctypes.c_void_p * count)(*[addr + i * kvm.PAGE for i in range(count)])
    status = (ctypes.c_int * count)()
    libc = ctypes.CDLL(None, use_errno=True)

    def where() -> dict[str, int]:
        if libc.syscall(NR_MOVE_PAGES, 0, ctypes.c_ulong(count), pages, None, status, 0) < 0:
            raise OSError(ctypes.get_errno(), f"move_pages (query): {os.strerror(ctypes.get_errno())}")
        out: dict[str, int] = {}
        for st in status:
            key = str(st) if st >= 0 else f"error {-st}"
            out[key] = out.get(key, 0) + 1
        return out

    before = where()
    here = list(status)
    record: dict[str, Any] = {"nodes": nodes, "to": "the next node after each page's" if node is None else node,
                              "before": before}
    if len(nodes) < 2:
        record.update(moved=False, why=f"L1 has one NUMA node ({nodes[0]}): there is nowhere to move the pages "
                                       "(lab.numa_nodes: 2 gives two)")
        return record
    if node is not None and node not in nodes:
        raise ValueError(f"move_pages: node {node} is not one of L1's nodes {nodes}")

    def destination(now: int) -> int:  # each page to another node than its own: L1 may have spread the range
        if node is not None:
            return node
        return nodes[(nodes.index(now) + 1) % len(nodes)] if now in nodes else nodes[0]

    goal = [destination(n) for n in here]
    counters = vmstat("pgmigrate", "thp_migration")
    targets = (ctypes.c_int * count)(*goal)
    if libc.syscall(NR_MOVE_PAGES, 0, ctypes.c_ulong(count), pages, targets, status, MPOL_MF_MOVE) < 0:
        raise OSError(ctypes.get_errno(), f"move_pages: {os.strerror(ctypes.get_errno())}")
    record.update(moved=True, after=where(), vmstat=_delta(counters, vmstat("pgmigrate", "thp_migration")))
    return record


#: /proc/kpageflags bits (include/uapi/linux/kernel-page-flags.h)
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 15, 16
PFN_MASK, PRESENT = (1 << 55) - 1, 1 << 63


def folios(addr: int, length: int, pagemap: str = "/proc/self/pagemap",
           kpageflags: str = "/proc/kpageflags") -> dict[str, int]:
    """What backs the range, as {folio size in bytes (text): how many}: from this process's
    page table (/proc/self/pagemap, root: real PFNs) and each page's compound flags
    (/proc/kpageflags). A folio that starts before the range or ends after it is counted
    by the part inside; pages not present are left out. The VMM side's ground truth for
    mTHP, collapse and split (smaps shows only PMD-mapped THPs).

    The flags of physically consecutive pages are read in one go (a seek and a read per
    page took 0.24 s for 16 MiB under TCG)."""
    import struct

    pages = length // kvm.PAGE
    with open(pagemap, "rb") as f:
        f.seek(addr // kvm.PAGE * 8)
        entries = struct.unpack(f"<{pages}Q", f.read(pages * 8))
    pfns = [entry & PFN_MASK if entry & PRESENT else None for entry in entries]
    flags: list[int] = [0] * pages
    with open(kpageflags, "rb") as kf:
        i = 0
        while i < pages:
            pfn = pfns[i]
            if pfn is None:
                i += 1
                continue
            j = i + 1
            while j < pages and pfns[j] == pfn + (j - i):
                j += 1
            kf.seek(pfn * 8)
            raw = kf.read((j - i) * 8)
            flags[i:i + len(raw) // 8] = struct.unpack(f"<{len(raw) // 8}Q", raw[:len(raw) // 8 * 8])
            i = j
    counts: dict[str, int] = {}
    run = last = 0

    def close() -> None:
        if run:
            key = str(run * kvm.PAGE)
            counts[key] = counts.get(key, 0) + 1

    for pfn, flag in zip(pfns, flags):
        if pfn is None:
            close()
            run = 0
            continue
        if flag >> KPF_COMPOUND_TAIL & 1 and run and pfn == last + 1:  # the same folio, on
            run, last = run + 1, pfn
            continue
        close()
        run, last = 1, pfn
    close()
    return counts
