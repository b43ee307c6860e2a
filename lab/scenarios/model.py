"""Scenarios are data: one YAML file each, a suite is a directory of them
(configs/suites/thp/).

Every key is checked when the file is loaded; a mistake gives one line naming the file,
the key, the value and what is accepted (exit status 2), before anything runs. The keys,
with defaults, are documented in configs/suites/README.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.analysis.expect import RegionExpectation
from lab.analysis.mapping import PAGE_SIZES
from lab.core import validate as v
from lab.core.errors import UserError
from lab.core.validate import Bad, Checker, parse_bytes
from lab.core.versions import versions_match
from lab.scenarios import expectations
from lab.scenarios.l2 import GH_MEMORY, PROBE_CODE_IPA, L2Hypervisor, parse_l2_hypervisor
from lab.shared import contract
from lab.shared.contract import BACKINGS, Action, ContractError, Memslot
from lab.shared.units import GiB, KiB, MiB, short_size

__all__ = ["Guest", "Memslot", "RegionExpectation", "Scenario", "load", "parse", "parse_bytes"]

PASSES = ("read", "write", "read-write")
ORDERS = ("forward", "backward", "scattered")
GUESTS = ("touch", "linux")
THP = ("always", "madvise", "never")
DEFRAG = ("always", "defer", "defer+madvise", "madvise", "never")
SHMEM_THP = ("always", "within_size", "advise", "never", "deny", "force")
#: multi-size THP, per folio size: anonymous memory (hugepages-SIZEkB/enabled) and shmem
#: (hugepages-SIZEkB/shmem_enabled)
MTHP = ("always", "inherit", "madvise", "never")
SHMEM_MTHP = ("always", "inherit", "within_size", "advise", "never")
#: the folio sizes of a 4 KiB-page kernel: order 1 (shmem only, 6.12) or 2 up to PMD size
MTHP_SIZES = tuple(f"{k}K" for k in (8, 16, 32, 64, 128, 256, 512)) + ("1M", "2M")
QEMU_BACKENDS = ("ram", "memfd", "file")
QEMU_RAM_BASE = 0x4000_0000


@dataclass
class Guest:
    kind: str = "touch"
    base: int = 0
    size: int = 0
    stride: int = 4 * KiB
    passes: list[str] = field(default_factory=lambda: ["write"])
    pauses: list[int] = field(default_factory=list)
    order: str = "forward"
    vcpus: int = 1
    forever: bool = False
    #: every vCPU touches the whole range (default: vCPU i its i-th share)
    whole: bool = False
    #: linux: what L2's init does once booted (a shell command line)
    workload: str = ""


@dataclass
class Scenario:
    name: str
    description: str
    path: Path | None
    vmm: str = "probe"
    l1: dict[str, Any] = field(default_factory=dict)
    memslots: list[Memslot] = field(default_factory=list)
    qemu: dict[str, Any] = field(default_factory=dict)
    guest: Guest = field(default_factory=Guest)
    actions: list[Action] = field(default_factory=list)
    regions: list[RegionExpectation] = field(default_factory=list)
    total_faults: tuple[int, int] | None = None
    #: (kernel versions or None for all, {smaps key: (lo, hi) bytes}), in file order.
    smaps: list[tuple[str | None, dict[str, tuple[int, int]]]] = field(default_factory=list)
    #: {folio size in bytes: (lo, hi) count} of memslot 1's memory at the end (the probe
    #: reads its page table and /proc/kpageflags)
    folios: dict[int, tuple[int, int]] = field(default_factory=dict)
    fault_ratio: float | None = None  # linux + compare_thp: faults(2nd) / faults(1st) at least this
    compare_thp: list[str] = field(default_factory=list)
    clean_log: bool = True
    kill_after: float | None = None
    #: kill_after: [lo, hi]: each run is killed at a random moment in that window.
    kill_after_max: float | None = None
    #: Runs of the VMM in a row (a stress scenario): judged on L1's health, not traced.
    repeat: int = 1
    timeout: float = 60
    kernels: str | None = None
    trace_buffer_kb: int | None = None
    tags: list[str] = field(default_factory=list)
    l2_hypervisor: L2Hypervisor | None = None
    #: probe: KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE in bytes (0: KVM's default, off)
    eager_split: int = 0
    #: L1 page sizes the expectations are written for (`granules: [4K, 16K]`); n/a on others
    granules: list[int] = field(default_factory=lambda: [4 * KiB])

    def smaps_for(self, release: str) -> dict[str, tuple[int, int]]:
        """The smaps expectations that apply to a kernel release."""
        out: dict[str, tuple[int, int]] = {}
        for kernels, values in self.smaps:
            if kernels is None or not release or versions_match(kernels, release):
                out.update(values)
        return out

    @property
    def expected(self) -> str:
        parts = [r.describe() for r in self.regions]
        if self.total_faults:
            parts.append(f"{self.total_faults[0]}-{self.total_faults[1]} faults")
        if self.fault_ratio:
            parts.append(f"faults THP {self.compare_thp[1]}/{self.compare_thp[0]} >= {self.fault_ratio:g}")
        if self.repeat > 1:
            parts.append(f"{self.repeat} VMM runs killed")
        if self.clean_log and (not parts or self.repeat > 1):
            parts.append("clean L1 log")
        return "; ".join(parts)

    def expected_faults(self) -> int:
        """An upper bound on the events one run's trace must hold (sizes L1's ring buffer:
        resizing it took 0.3 s at 64 MiB and 1.6 s at 256 MiB per CPU under TCG)."""
        if self.guest.kind == "linux":
            # Each run (of compare_thp's too: one job each) faults each 4 KiB of guest RAM
            # at most twice, plus its MMIO (the console, virtio): 4.8 k events measured for
            # l2-linux-thp's 256 MiB with THP never.
            return int(self.qemu.get("memory", 256 * MiB)) // (4 * KiB) * 2 + LINUX_MMIO_EVENTS
        touched = max(1, self.guest.size // max(self.guest.stride, 1))
        pages = max(touched, self.guest.size // (4 * KiB))
        passes = len(self.guest.passes) * (50 if self.guest.forever else 1)
        bound = pages * passes * 2 + 10_000
        if self.guest.forever and self.kill_after is not None:
            # killed: its faults are bounded by the time it runs as well
            seconds = (self.kill_after_max or self.kill_after) + KILL_SLACK_SECONDS
            bound = min(bound, int(seconds * MAX_EVENTS_PER_SECOND) + pages * 2 + 10_000)
        return bound


#: MMIO faults an L2 Linux takes in one run, at most (its console and virtio queues).
LINUX_MMIO_EVENTS = 50_000
#: Stage-2 faults per second L1 can take, over all its vCPUs, far above what TCG allows:
#: 6 k/s measured (vmm-killed, 2 vCPUs, 2 cores), so a 16 times faster host fits.
MAX_EVENTS_PER_SECOND = 100_000
#: A killed VMM's trace: from its start to its first fault, and its death's unmaps.
KILL_SLACK_SECONDS = 2.0

TOP_KEYS = ("name", "description", "vmm", "l1", "memslots", "qemu", "guest", "actions", "expect", "kill_after",
            "repeat", "timeout", "kernels", "trace", "compare_thp", "tags", "l2_hypervisor", "eager_split",
            "granules")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def parse(data: Any, where: str, path: Path | None = None) -> Scenario:
    """A scenario file's data, every key checked (one UserError line on the first mistake)."""
    c = Checker(where)
    if not isinstance(data, dict):
        raise UserError(f"{where}: a scenario is a mapping of keys ({', '.join(TOP_KEYS)}); fix the scenario file")
    c.mapping("", data, TOP_KEYS)
    name = c.get(data, "name", "name", v.text(), (path or Path(where)).stem)
    if not name or not _NAME.match(name):
        c.fail("name", name, "lowercase letters, digits, '.', '_' or '-'")
    vmm = c.get(data, "vmm", "vmm", v.choice(contract.VMMS), "probe")
    memslots = _memslots(c, data, vmm)
    qemu_cfg = _qemu(c, data, vmm)
    guest = _guest(c, data, vmm, memslots, qemu_cfg)
    actions = _actions(c, data, vmm, memslots, guest)
    e = c.mapping("expect", data.get("expect"), ("regions", "faults", "smaps", "folios", "fault_ratio", "clean_log"))
    compare = data.get("compare_thp") or []
    if compare and (not isinstance(compare, list) or len(compare) != 2 or any(x not in THP for x in compare)):
        c.fail("compare_thp", compare, "two L1 THP modes, e.g. [always, never]")
    ratio = c.get(e, "fault_ratio", "expect.fault_ratio", v.seconds(1, 1e6))
    if ratio and not compare:
        c.fail("expect.fault_ratio", ratio, "no fault_ratio without compare_thp")
    trace = c.mapping("trace", data.get("trace"), ("buffer_kb",))
    kill = c.get(data, "kill_after", "kill_after", v.window(0.1, 600))
    repeat = c.get(data, "repeat", "repeat", v.integer(1, 10_000), 1)
    if repeat > 1 and (kill is None or vmm != "probe" or compare or e.get("regions") or e.get("faults")
                       or e.get("smaps")):
        c.fail("repeat", repeat, "1, unless the scenario is a stress run: vmm probe, kill_after set, and no "
               "regions, faults or smaps expectations (a repeated run is judged on L1's log only)")
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        c.fail("tags", tags, "a list of words")
    description = c.get(data, "description", "description", v.text(), "")
    return Scenario(
        name=name, description=" ".join(description.split()), path=path, vmm=vmm, l1=_l1(c, data),
        memslots=memslots, qemu=qemu_cfg, guest=guest, actions=actions, regions=expectations.regions(c, e),
        total_faults=c.get(e, "faults", "expect.faults", v.bounds), smaps=expectations.smaps(c, e), fault_ratio=ratio,
        folios=expectations.folios(c, e, vmm),
        compare_thp=list(compare), clean_log=c.get(e, "clean_log", "expect.clean_log", v.boolean, True),
        kill_after=kill[0] if kill else None, kill_after_max=kill[1] if kill and kill[1] != kill[0] else None,
        repeat=repeat, timeout=c.get(data, "timeout", "timeout", v.seconds(1, 3600), 60.0),
        kernels=c.get(data, "kernels", "kernels", expectations.KERNELS),
        trace_buffer_kb=c.get(trace, "buffer_kb", "trace.buffer_kb", v.integer(4, 4 * 1024 * 1024)), tags=list(tags),
        l2_hypervisor=parse_l2_hypervisor(c, data, vmm, memslots, len(guest.pauses), guest.vcpus),
        eager_split=_eager_split(c, data, vmm), granules=_granules(c, data))


def _l1(c: Checker, data: dict[str, Any]) -> dict[str, Any]:
    l1 = c.mapping("l1", data.get("l1"), ("thp", "defrag", "shmem_thp", "hugepages", "khugepaged", "mthp",
                                          "shmem_mthp"))
    hugepages = c.mapping("l1.hugepages", l1.get("hugepages"), ("64K", "2M", "32M", "1G"))
    mthp = {key: c.mapping(f"l1.{key}", l1.get(key), MTHP_SIZES) for key in ("mthp", "shmem_mthp")}
    return {"thp": c.get(l1, "thp", "l1.thp", v.choice(THP)),
            "defrag": c.get(l1, "defrag", "l1.defrag", v.choice(DEFRAG)),
            "shmem_thp": c.get(l1, "shmem_thp", "l1.shmem_thp", v.choice(SHMEM_THP)),
            "khugepaged": c.get(l1, "khugepaged", "l1.khugepaged", v.boolean, False),
            "hugepages": {str(parse_bytes(k) // KiB): c.get(hugepages, k, f"l1.hugepages.{k}", v.integer(0, 4096))
                          for k in hugepages},
            **{key: {str(parse_bytes(k) // KiB): c.get({k: "" if mode is None else mode}, k, f"l1.{key}.{k}",
                                                       v.choice(MTHP if key == "mthp" else SHMEM_MTHP))
                     for k, mode in sizes.items()} for key, sizes in mthp.items()}}


def _memslots(c: Checker, data: dict[str, Any], vmm: str) -> list[Memslot]:
    if vmm != "probe":
        if data.get("memslots") is not None:
            c.fail("memslots", data["memslots"],
                   "no memslots with vmm: qemu (QEMU lays out its own RAM; use qemu.memory)")
        return []
    raw_slots = data.get("memslots")
    if not isinstance(raw_slots, list) or not raw_slots:
        c.fail("memslots", raw_slots, "a list of memslots (ipa, size, backing) for the probe VMM")
    memslots: list[Memslot] = []
    for i, raw in enumerate(raw_slots or []):
        key = f"memslots[{i}]"
        slot = c.mapping(key, raw, ("ipa", "size", "backing", "offset", "dirty_log"))
        ipa = c.get(slot, "ipa", f"{key}.ipa", v.size(2 * GiB // 4, (1 << 40) - 1, 4 * KiB), None)
        size = c.get(slot, "size", f"{key}.size", v.size(4 * KiB, 4 * GiB, 4 * KiB), None)
        if ipa is None or size is None:
            c.fail(key, raw, "ipa and size (e.g. ipa: 1G, size: 64M)")
        backing = c.get(slot, "backing", f"{key}.backing", v.choice(tuple(BACKINGS)), "anonymous")
        huge = BACKINGS[backing].huge
        offset = c.get(slot, "offset", f"{key}.offset", v.size(0, 2 * MiB - 4 * KiB, 4 * KiB), 0)
        if huge and (offset % huge or size % huge or ipa % huge):
            c.fail(key, raw, f"ipa, size and offset multiples of the {short_size(huge)} huge page for {backing}")
        memslots.append(Memslot(i + 1, ipa, size, backing, offset,
                                c.get(slot, "dirty_log", f"{key}.dirty_log", v.boolean, False)))
    ordered = sorted(memslots, key=lambda m: m.ipa)
    for a, b in zip(ordered, ordered[1:]):
        if a.ipa + a.size > b.ipa:
            c.fail("memslots", raw_slots, "memslots that do not overlap")
    payload = GH_MEMORY if data.get("l2_hypervisor") is not None else 64 * KiB
    if any(m.ipa < PROBE_CODE_IPA + payload and m.ipa + m.size > PROBE_CODE_IPA for m in memslots):
        c.fail("memslots", raw_slots, f"memslots clear of the payload at {PROBE_CODE_IPA:#x}+{short_size(payload)}")
    return memslots


def _qemu(c: Checker, data: dict[str, Any], vmm: str) -> dict[str, Any]:
    if vmm != "qemu":
        return {}
    q = c.mapping("qemu", data.get("qemu"), ("memory", "backend", "prealloc", "smp"))
    return {"memory": c.get(q, "memory", "qemu.memory", v.size(64 * MiB, 1536 * MiB, MiB), 256 * MiB),
            "backend": c.get(q, "backend", "qemu.backend", v.choice(QEMU_BACKENDS), "ram"),
            "prealloc": c.get(q, "prealloc", "qemu.prealloc", v.boolean, False)}


def _guest(c: Checker, data: dict[str, Any], vmm: str, memslots: list[Memslot], qemu_cfg: dict[str, Any]) -> Guest:
    g = c.mapping("guest", data.get("guest"), ("kind", "base", "size", "stride", "access", "pauses", "order",
                                               "vcpus", "forever", "whole", "workload"))
    kind = c.get(g, "kind", "guest.kind", v.choice(GUESTS), "touch")
    if kind == "linux" and vmm != "qemu":
        c.fail("guest.kind", kind, "touch with the probe VMM (the L2 Linux guest runs under vmm: qemu)")
    if kind == "linux":
        default_base, default_size = QEMU_RAM_BASE, qemu_cfg["memory"]
    elif vmm == "qemu":
        default_base, default_size = QEMU_RAM_BASE + 2 * MiB, qemu_cfg["memory"] - 4 * MiB
    else:
        default_base, default_size = memslots[0].ipa, memslots[0].size
    access = g.get("access", "write")
    passes = [access] if isinstance(access, str) else access
    if not isinstance(passes, list) or not 1 <= len(passes) <= 4 or any(p not in PASSES for p in passes):
        c.fail("guest.access", access, "read, write, read-write, or a list of up to 4 of them (one per pass)")
    guest = Guest(
        kind=kind,
        base=c.get(g, "base", "guest.base", parse_bytes, default_base),
        size=c.get(g, "size", "guest.size", v.size(4 * KiB, 4 * GiB), default_size),
        stride=c.get(g, "stride", "guest.stride", v.size(8, 1 * GiB, 8), 4 * KiB),
        passes=list(passes),
        pauses=c.get(g, "pauses", "guest.pauses", lambda x: _pauses(x, len(passes)), []),
        order=c.get(g, "order", "guest.order", v.choice(ORDERS), "forward"),
        vcpus=c.get(g, "vcpus", "guest.vcpus", v.integer(1, 8), 1),
        forever=c.get(g, "forever", "guest.forever", v.boolean, False),
        whole=c.get(g, "whole", "guest.whole", v.boolean, False),
        workload=c.get(g, "workload", "guest.workload", v.text(), ""),
    )
    inside = {"base": hex(guest.base), "size": guest.size}
    if kind == "touch" and vmm == "probe" and not any(
            m.ipa <= guest.base and guest.base + guest.size <= m.ipa + m.size for m in memslots):
        c.fail("guest", inside, "a touched range inside one memslot")
    if kind == "touch" and vmm == "qemu" and not (
            QEMU_RAM_BASE + 2 * MiB <= guest.base and guest.base + guest.size <= QEMU_RAM_BASE + qemu_cfg["memory"]):
        c.fail("guest", inside,
               f"a touched range inside QEMU's RAM above its first 2 MiB ({QEMU_RAM_BASE + 2 * MiB:#x} on)")
    return guest


def _actions(c: Checker, data: dict[str, Any], vmm: str, memslots: list[Memslot], guest: Guest) -> list[Action]:
    """Every action checked against the host-guest contract (lab/shared/contract.py): its
    name, the VMM that does it, every key it takes and each value."""
    raw_actions = data.get("actions") or []
    if not isinstance(raw_actions, list):
        c.fail("actions", raw_actions, "a list of actions")
    actions = []
    for i, raw in enumerate(raw_actions):
        key = f"actions[{i}]"
        if not isinstance(raw, dict) or "do" not in raw:
            c.fail(key, raw, "a mapping with at least `do` (and `at`)")
        action = dict(raw)
        _sizes(c, action, key)
        if isinstance(action.get("ops"), list):
            action["ops"] = [dict(op) if isinstance(op, dict) else op for op in action["ops"]]
            for j, op in enumerate(action["ops"]):
                if isinstance(op, dict):
                    _sizes(c, op, f"{key}.ops[{j}]")
        try:
            checked = contract.check_action(action, key, vmm)
        except ContractError as exc:
            raise UserError(f"{c.where}: {exc}; fix the scenario file") from None
        if "slot" in action and not any(m.slot == checked.slot for m in memslots):
            c.fail(f"{key}.slot", action["slot"], "the number of a memslot (1 = the first)")
        slot = next((m for m in memslots if m.slot == checked.slot), None)
        if slot is not None and "slot" in contract.ACTIONS[checked.do].keys:
            ops = [(key, checked.as_op())] if checked.do in (*contract.OPS, "prefault", "churn") else []
            ops += [(f"{key}.ops[{j}]", op) for j, op in enumerate(checked.ops)]
            for where, op in ops:
                _check_range(c, where, op, slot)
        actions.append(checked)
    pause_points = {a.at for a in actions if a.at.startswith("pause")}
    if len(pause_points) > len(guest.pauses):
        c.fail("actions", sorted(pause_points),
               f"pause points the guest reaches (guest.pauses has {len(guest.pauses)})")
    return actions


def _check_range(c: Checker, key: str, op: contract.Op, slot: Memslot) -> None:
    """An operation's range lies in its memslot, on 4 KiB pages; `every` steps forward."""
    for name in ("offset", "size", "every"):
        value = getattr(op, name)
        if value and value % (4 * KiB):
            c.fail(f"{key}.{name}", short_size(value), "a multiple of 4K (madvise, mprotect and munmap work on pages)")
    if op.offset >= slot.size:
        c.fail(f"{key}.offset", short_size(op.offset),
               f"an offset inside memslot {slot.slot} ({short_size(slot.size)})")
    if op.size is not None and (op.size == 0 or op.offset + op.size > slot.size):
        c.fail(f"{key}.size", short_size(op.size), f"a size from 4K to {short_size(slot.size - op.offset)} "
               f"(memslot {slot.slot} is {short_size(slot.size)}, the range starts at {short_size(op.offset)})")
    if op.every is not None and op.every < (op.size or 4 * KiB):
        c.fail(f"{key}.every", short_size(op.every), "a step at least the range's size")


def _sizes(c: Checker, values: dict[str, Any], key: str) -> None:
    """Sizes as people write them (4K, 2M) into bytes, in place, before the contract's check."""
    for size_key in contract.SIZE_KEYS:
        if size_key in values:
            values[size_key] = c.get(values, size_key, f"{key}.{size_key}", parse_bytes)


def _eager_split(c: Checker, data: dict[str, Any], vmm: str) -> int:
    raw = data.get("eager_split")
    if raw is None:
        return 0
    size = c.get(data, "eager_split", "eager_split", parse_bytes)
    if vmm != "probe" or size not in (4 * KiB, 2 * MiB, GiB):
        c.fail("eager_split", raw, "a block size of the probe's VM: 4K, 2M or 1G (the chunk KVM splits blocks in "
               "when dirty logging starts)")
    return int(size)


def _granules(c: Checker, data: dict[str, Any]) -> list[int]:
    """`granules`: the L1 page sizes a scenario's expectations hold for (default 4K). A
    region is a level-2 block's span, 2 MiB with 4K and 32 MiB with 16K, so a scenario whose
    expectations do not count pages per region can name both."""
    raw = data.get("granules")
    if raw is None:
        return [4 * KiB]
    sizes = []
    for value in raw if isinstance(raw, list) and raw else [None]:
        try:
            size = parse_bytes(value)
        except Bad:
            size = 0
        if size not in PAGE_SIZES:
            c.fail("granules", raw, "a list of L1 page sizes: 4K, 16K or 64K, e.g. [4K, 16K]")
        sizes.append(size)
    return sorted(set(sizes))


def _pauses(value: Any, passes: int) -> list[int]:
    if not isinstance(value, list) or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < passes
                                          for x in value):
        raise Bad(f"a list of pass numbers from 0 to {passes - 1} (a pause comes before that pass)")
    return sorted(set(value))


def load(path: Path) -> Scenario:
    data = v.read_yaml(path, "no such scenario file; `kvmlab test --list` shows the suites", "fix the scenario file")
    return parse(data, str(path), path)
