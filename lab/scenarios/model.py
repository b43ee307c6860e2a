"""Scenarios are data: one YAML file each, a suite is a directory of them (configs/thp/).

Every key is checked when the file is loaded; a mistake gives one line naming the file,
the key, the value and what is accepted (exit status 2), before anything runs. The keys,
with defaults, are documented in configs/thp/README.md.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lab.config import read_yaml
from lab.errors import UserError
from lab.l1.kvm import BACKINGS
from lab.paths import CONFIGS_DIR

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
MAPPINGS = ("block", "page", "split", "block-1g")
PASSES = ("read", "write", "read-write")
ORDERS = ("forward", "backward", "scattered")
VMMS = ("probe", "qemu")
GUESTS = ("touch", "linux")
THP = ("always", "madvise", "never")
DEFRAG = ("always", "defer", "defer+madvise", "madvise", "never")
SHMEM_THP = ("always", "within_size", "advise", "never", "deny", "force")
ACTIONS = ("prefault", "dirty_log", "dirty_pages", "madvise", "mprotect", "munmap", "fork_child", "alias",
           "smaps", "sleep", "churn", "migrate", "dirty_rate")
QEMU_BACKENDS = ("ram", "memfd", "file")
PROBE_CODE_IPA = 0x1000_0000
QEMU_RAM_BASE = 0x4000_0000
UART = 0x0900_0000
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.I)
_VERSION_TERM = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+){0,2})\s*$")


class Bad(ValueError):
    """A value is wrong; the message says what is accepted."""


def parse_bytes(value: Any) -> int:
    """4096, '4K', '2M', '1G', '0x40000000' -> bytes."""
    if isinstance(value, bool):
        raise Bad("a size such as 4K, 2M, 1G or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise Bad("a size of at least 0")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower().startswith("0x"):
            try:
                return int(text, 16)
            except ValueError:
                pass
        m = _SIZE.match(text)
        if m:
            return int(m.group(1)) * {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}[m.group(2).upper()]
    raise Bad("a size such as 4K, 2M, 1G, 0x40000000 or a number of bytes")


def version_tuple(text: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text)
    if not m:
        return (0,)
    return tuple(int(g or 0) for g in m.groups())


def check_versions(spec: str) -> str:
    """'>=5.15', '<5.15', '>=6.1,<6.12'."""
    if not isinstance(spec, str) or not spec.strip() or \
            not all(_VERSION_TERM.match(term) for term in spec.split(",")):
        raise Bad("kernel version conditions such as '>=5.15' or '>=6.1,<6.12'")
    return spec


def check_qemu_versions(spec: str) -> str:
    """L0 QEMU version conditions: '>=9.0', '<9.0'."""
    try:
        return check_versions(spec)
    except Bad:
        raise Bad("QEMU version conditions such as '>=9.0' or '<9.0'") from None


def versions_match(spec: str | None, release: str) -> bool:
    if not spec:
        return True
    have = version_tuple(release)
    for term in spec.split(","):
        op, ver = _VERSION_TERM.match(term).groups()
        want = version_tuple(ver)
        n = len(want)
        cmp = (have[:n] > want) - (have[:n] < want)
        if not {">=": cmp >= 0, "<=": cmp <= 0, "==": cmp == 0, "!=": cmp != 0, ">": cmp > 0, "<": cmp < 0}[op]:
            return False
    return True


@dataclass
class Memslot:
    slot: int
    ipa: int
    size: int
    backing: str = "anonymous"
    offset: int = 0
    dirty_log: bool = False


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
    #: linux: what L2's init does once booted (a shell command line)
    workload: str = ""


@dataclass
class RegionExpectation:
    mapping: str | None = None
    start: int | None = None
    size: int | None = None
    phase: int | None = None
    faults: tuple[int, int] | None = None
    kernels: str | None = None
    #: L0 QEMU versions this expectation holds under (e.g. ">=9.0"), for behaviour that
    #: depends on what L0 emulates; the description says why
    qemu: str | None = None

    def describe(self) -> str:
        text = self.mapping or "any"
        if self.faults:
            lo, hi = self.faults
            text += f" ({lo if lo == hi else f'{lo}-{hi}'}/region)"
        if self.phase is not None:
            text = f"phase {self.phase}: {text}"
        if self.kernels:
            text += f" on {self.kernels}"
        if self.qemu:
            text += f" under QEMU {self.qemu}"
        return text


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
    actions: list[dict[str, Any]] = field(default_factory=list)
    regions: list[RegionExpectation] = field(default_factory=list)
    total_faults: tuple[int, int] | None = None
    #: (kernel versions or None for all, {smaps key: (lo, hi) bytes}), in file order.
    smaps: list[tuple[str | None, dict[str, tuple[int, int]]]] = field(default_factory=list)
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
        """An upper bound on the events the trace must hold (sizes the ring buffer)."""
        if self.guest.kind == "linux":
            return 200_000 * max(1, len(self.compare_thp))
        touched = max(1, self.guest.size // max(self.guest.stride, 1))
        pages = max(touched, self.guest.size // (4 * KiB))
        passes = len(self.guest.passes) * (50 if self.guest.forever else 1)
        return pages * passes * 2 + 10_000


# -- checking ------------------------------------------------------------------------------
class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, value: Any, expected: str) -> None:
        raise UserError(f"{self.where}: {key}: expected {expected}, got {value!r}; fix the scenario file")

    def mapping(self, key: str, value: Any, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(key, value, "a mapping")
        for k in value:
            if k not in known:
                raise UserError(f"{self.where}: {f'{key}.' if key else ''}{k}: unknown key; known keys: "
                                f"{', '.join(known)}")
        return value

    def get(self, data: dict, key: str, path: str, check: Callable[[Any], Any], default: Any = None) -> Any:
        if key not in data or data[key] is None:
            return default
        try:
            return check(data[key])
        except Bad as exc:
            self.fail(path, data[key], str(exc))


def _choice(options) -> Callable[[Any], str]:
    def check(v):
        if v not in options:
            raise Bad("one of " + ", ".join(options))
        return v
    return check


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise Bad(f"an integer from {lo} to {hi}")
        return v
    return check


def _seconds(lo: float, hi: float) -> Callable[[Any], float]:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise Bad(f"a number of seconds from {lo:g} to {hi:g}")
        return float(v)
    return check


def _window(lo: float, hi: float) -> Callable[[Any], tuple[float, float]]:
    """Seconds, or [min, max] seconds (a random moment in that window, per run)."""
    def check(v):
        pair = v if isinstance(v, list) and len(v) == 2 else [v, v]
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not lo <= x <= hi for x in pair) \
                or pair[0] > pair[1]:
            raise Bad(f"a number of seconds from {lo:g} to {hi:g}, or [min, max] such seconds")
        return float(pair[0]), float(pair[1])
    return check


def _bool(v):
    if not isinstance(v, bool):
        raise Bad("true or false")
    return v


def _text(v):
    if not isinstance(v, str):
        raise Bad("text")
    return v


def _bounds(v):
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return (v, v)
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v) \
            and v[0] <= v[1]:
        return (v[0], v[1])
    raise Bad("a count or [min, max]")


def _size_checked(lo: int, hi: int, multiple: int = 1) -> Callable[[Any], int]:
    def check(v):
        n = parse_bytes(v)
        if not lo <= n <= hi or n % multiple:
            raise Bad(f"a size from {_fmt(lo)} to {_fmt(hi)}" + (f", a multiple of {_fmt(multiple)}" if multiple > 1 else ""))
        return n
    return check


def _fmt(n: int) -> str:
    for unit, scale in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


TOP_KEYS = ("name", "description", "vmm", "l1", "memslots", "qemu", "guest", "actions", "expect", "kill_after",
            "repeat", "timeout", "kernels", "trace", "compare_thp", "tags")


def parse(data: Any, where: str, path: Path | None = None) -> Scenario:
    c = _Checker(where)
    if not isinstance(data, dict):
        raise UserError(f"{where}: a scenario is a mapping of keys ({', '.join(TOP_KEYS)}); fix the scenario file")
    c.mapping("", data, TOP_KEYS)
    name = c.get(data, "name", "name", _text, (path or Path(where)).stem)
    if not name or not re.match(r"^[a-z0-9][a-z0-9_.-]*$", name):
        c.fail("name", name, "lowercase letters, digits, '.', '_' or '-'")
    description = c.get(data, "description", "description", _text, "")
    vmm = c.get(data, "vmm", "vmm", _choice(VMMS), "probe")

    l1 = c.mapping("l1", data.get("l1"), ("thp", "defrag", "shmem_thp", "hugepages", "khugepaged"))
    l1_clean: dict[str, Any] = {}
    l1_clean["thp"] = c.get(l1, "thp", "l1.thp", _choice(THP))
    l1_clean["defrag"] = c.get(l1, "defrag", "l1.defrag", _choice(DEFRAG))
    l1_clean["shmem_thp"] = c.get(l1, "shmem_thp", "l1.shmem_thp", _choice(SHMEM_THP))
    l1_clean["khugepaged"] = c.get(l1, "khugepaged", "l1.khugepaged", _bool, False)
    hugepages = c.mapping("l1.hugepages", l1.get("hugepages"), ("64K", "2M", "32M", "1G"))
    l1_clean["hugepages"] = {str(parse_bytes(k) // KiB): c.get(hugepages, k, f"l1.hugepages.{k}", _int(0, 4096))
                             for k in hugepages}

    memslots: list[Memslot] = []
    if vmm == "probe":
        raw_slots = data.get("memslots")
        if not isinstance(raw_slots, list) or not raw_slots:
            c.fail("memslots", raw_slots, "a list of memslots (ipa, size, backing) for the probe VMM")
        for i, raw in enumerate(raw_slots):
            key = f"memslots[{i}]"
            slot = c.mapping(key, raw, ("ipa", "size", "backing", "offset", "dirty_log"))
            ipa = c.get(slot, "ipa", f"{key}.ipa", _size_checked(2 * GiB // 4, (1 << 40) - 1, 4 * KiB), None)
            size = c.get(slot, "size", f"{key}.size", _size_checked(4 * KiB, 4 * GiB, 4 * KiB), None)
            if ipa is None or size is None:
                c.fail(key, raw, "ipa and size (e.g. ipa: 1G, size: 64M)")
            backing = c.get(slot, "backing", f"{key}.backing", _choice(tuple(BACKINGS)), "anonymous")
            huge = BACKINGS[backing][2]
            offset = c.get(slot, "offset", f"{key}.offset", _size_checked(0, 2 * MiB - 4 * KiB, 4 * KiB), 0)
            if huge and (offset % huge or size % huge or ipa % huge):
                c.fail(key, raw, f"ipa, size and offset multiples of the {_fmt(huge)} huge page for {backing}")
            memslots.append(Memslot(i + 1, ipa, size, backing, offset,
                                    c.get(slot, "dirty_log", f"{key}.dirty_log", _bool, False)))
        ordered = sorted(memslots, key=lambda m: m.ipa)
        for a, b in zip(ordered, ordered[1:]):
            if a.ipa + a.size > b.ipa:
                c.fail("memslots", raw_slots, "memslots that do not overlap")
        if any(m.ipa < PROBE_CODE_IPA + 64 * KiB and m.ipa + m.size > PROBE_CODE_IPA for m in memslots):
            c.fail("memslots", raw_slots, f"memslots clear of the payload at {PROBE_CODE_IPA:#x}")
    elif data.get("memslots") is not None:
        c.fail("memslots", data["memslots"], "no memslots with vmm: qemu (QEMU lays out its own RAM; use qemu.memory)")

    qemu_cfg: dict[str, Any] = {}
    if vmm == "qemu":
        q = c.mapping("qemu", data.get("qemu"), ("memory", "backend", "prealloc", "smp"))
        qemu_cfg = {"memory": c.get(q, "memory", "qemu.memory", _size_checked(64 * MiB, 1536 * MiB, MiB), 256 * MiB),
                    "backend": c.get(q, "backend", "qemu.backend", _choice(QEMU_BACKENDS), "ram"),
                    "prealloc": c.get(q, "prealloc", "qemu.prealloc", _bool, False)}

    g = c.mapping("guest", data.get("guest"), ("kind", "base", "size", "stride", "access", "pauses", "order", "vcpus",
                                               "forever", "workload"))
    kind = c.get(g, "kind", "guest.kind", _choice(GUESTS), "touch")
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
        size=c.get(g, "size", "guest.size", _size_checked(4 * KiB, 4 * GiB), default_size),
        stride=c.get(g, "stride", "guest.stride", _size_checked(8, 1 * GiB, 8), 4 * KiB),
        passes=list(passes),
        pauses=c.get(g, "pauses", "guest.pauses", lambda v: _pauses(v, len(passes)), []),
        order=c.get(g, "order", "guest.order", _choice(ORDERS), "forward"),
        vcpus=c.get(g, "vcpus", "guest.vcpus", _int(1, 8), 1),
        forever=c.get(g, "forever", "guest.forever", _bool, False),
        workload=c.get(g, "workload", "guest.workload", _text, ""),
    )
    if kind == "touch":
        if vmm == "probe" and not any(m.ipa <= guest.base and guest.base + guest.size <= m.ipa + m.size for m in memslots):
            c.fail("guest", {"base": hex(guest.base), "size": guest.size}, "a touched range inside one memslot")
        if vmm == "qemu" and not (QEMU_RAM_BASE + 2 * MiB <= guest.base
                                  and guest.base + guest.size <= QEMU_RAM_BASE + qemu_cfg["memory"]):
            c.fail("guest", {"base": hex(guest.base), "size": guest.size},
                   f"a touched range inside QEMU's RAM above its first 2 MiB ({QEMU_RAM_BASE + 2 * MiB:#x} on)")

    actions = []
    raw_actions = data.get("actions") or []
    if not isinstance(raw_actions, list):
        c.fail("actions", raw_actions, "a list of actions")
    for i, raw in enumerate(raw_actions):
        key = f"actions[{i}]"
        if not isinstance(raw, dict) or "do" not in raw:
            c.fail(key, raw, "a mapping with at least `do` (and `at`)")
        do = c.get(raw, "do", f"{key}.do", _choice(ACTIONS))
        at = raw.get("at", "start")
        if not isinstance(at, str) or not re.match(r"^(start|end|pause [1-4])$", at):
            c.fail(f"{key}.at", at, "start, end or 'pause N' (N: the guest's N-th pause)")
        action = {k: v for k, v in raw.items()}
        for size_key in ("offset", "size", "every"):
            if size_key in action:
                action[size_key] = c.get(action, size_key, f"{key}.{size_key}", parse_bytes)
        for j, op in enumerate(action.get("ops", []) or []):
            for size_key in ("offset", "size", "every"):
                if isinstance(op, dict) and size_key in op:
                    op[size_key] = c.get(op, size_key, f"{key}.ops[{j}].{size_key}", parse_bytes)
        if "slot" in action and not any(m.slot == action["slot"] for m in memslots):
            c.fail(f"{key}.slot", action["slot"], "the number of a memslot (1 = the first)")
        actions.append(action)
    pause_points = {a["at"] for a in actions if a["at"].startswith("pause")}
    if len(pause_points) > len(guest.pauses):
        c.fail("actions", sorted(pause_points), f"pause points the guest reaches (guest.pauses has {len(guest.pauses)})")

    e = c.mapping("expect", data.get("expect"), ("regions", "faults", "smaps", "fault_ratio", "clean_log"))
    regions = []
    for i, raw in enumerate(e.get("regions") or []):
        key = f"expect.regions[{i}]"
        r = c.mapping(key, raw, ("mapping", "range", "phase", "faults", "kernels", "qemu"))
        rng = r.get("range")
        start = size = None
        if rng is not None:
            if not isinstance(rng, list) or len(rng) != 2:
                c.fail(f"{key}.range", rng, "[start IPA, size], e.g. [1G, 64M]")
            try:
                start, size = parse_bytes(rng[0]), parse_bytes(rng[1])
            except Bad:
                c.fail(f"{key}.range", rng, "[start IPA, size], e.g. [1G, 64M]")
        regions.append(RegionExpectation(
            mapping=c.get(r, "mapping", f"{key}.mapping", _choice(MAPPINGS)), start=start, size=size,
            phase=c.get(r, "phase", f"{key}.phase", _int(0, 4)),
            faults=c.get(r, "faults", f"{key}.faults", _bounds),
            kernels=c.get(r, "kernels", f"{key}.kernels", check_versions),
            qemu=c.get(r, "qemu", f"{key}.qemu", check_qemu_versions)))
    smaps = []
    raw_smaps = e.get("smaps")
    blocks = raw_smaps if isinstance(raw_smaps, list) else [raw_smaps] if raw_smaps is not None else []
    for i, block in enumerate(blocks):
        key = "expect.smaps" + (f"[{i}]" if isinstance(raw_smaps, list) else "")
        values = {}
        for k, v in c.mapping(key, block, SMAPS_KEYS + ("kernels",)).items():
            if k == "kernels":
                continue
            values[k] = c.get({k: v}, k, f"{key}.{k}",
                              lambda x: tuple(parse_bytes(y) for y in (x if isinstance(x, list) and len(x) == 2 else [x, x])))
        smaps.append((c.get(block or {}, "kernels", f"{key}.kernels", check_versions), values))
    compare = data.get("compare_thp") or []
    if compare and (not isinstance(compare, list) or len(compare) != 2 or any(x not in THP for x in compare)):
        c.fail("compare_thp", compare, "two L1 THP modes, e.g. [always, never]")
    ratio = c.get(e, "fault_ratio", "expect.fault_ratio", _seconds(1, 1e6))
    if ratio and not compare:
        c.fail("expect.fault_ratio", ratio, "no fault_ratio without compare_thp")

    trace = c.mapping("trace", data.get("trace"), ("buffer_kb",))
    kill = c.get(data, "kill_after", "kill_after", _window(0.1, 600))
    repeat = c.get(data, "repeat", "repeat", _int(1, 10_000), 1)
    if repeat > 1 and (kill is None or vmm != "probe" or compare or e.get("regions") or e.get("faults")
                       or e.get("smaps")):
        c.fail("repeat", repeat, "1, unless the scenario is a stress run: vmm probe, kill_after set, and no "
               "regions, faults or smaps expectations (a repeated run is judged on L1's log only)")
    tags = data.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        c.fail("tags", tags, "a list of words")
    return Scenario(
        name=name, description=" ".join(description.split()), path=path, vmm=vmm, l1=l1_clean, memslots=memslots,
        qemu=qemu_cfg, guest=guest, actions=actions, regions=regions,
        total_faults=c.get(e, "faults", "expect.faults", _bounds), smaps=smaps, fault_ratio=ratio,
        compare_thp=list(compare), clean_log=c.get(e, "clean_log", "expect.clean_log", _bool, True),
        kill_after=kill[0] if kill else None, kill_after_max=kill[1] if kill and kill[1] != kill[0] else None,
        repeat=repeat,
        timeout=c.get(data, "timeout", "timeout", _seconds(1, 3600), 60.0),
        kernels=c.get(data, "kernels", "kernels", check_versions),
        trace_buffer_kb=c.get(trace, "buffer_kb", "trace.buffer_kb", _int(4, 4 * 1024 * 1024)), tags=list(tags))


def _pauses(value: Any, passes: int) -> list[int]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < passes
                                          for v in value):
        raise Bad(f"a list of pass numbers from 0 to {passes - 1} (a pause comes before that pass)")
    return sorted(set(value))


SMAPS_KEYS = ("AnonHugePages", "ShmemPmdMapped", "FilePmdMapped", "Rss", "Private_Hugetlb", "Shared_Hugetlb")


def load(path: Path) -> Scenario:
    data = read_yaml(path, "no such scenario file; `kvmlab test --list` shows the suites", "fix the scenario file")
    where = str(path)
    return parse(data, where, path)


def suites_dir() -> Path:
    return CONFIGS_DIR


def suites() -> dict[str, Path]:
    """Directories under configs/ that hold scenario files."""
    return {p.name: p for p in sorted(CONFIGS_DIR.iterdir()) if p.is_dir() and any(p.glob("*.yaml"))}


def resolve(targets: list[str], keyword: str | None = None) -> list[Scenario]:
    """Suite names, scenario files or directories -> scenarios (each loaded and checked),
    filtered by `keyword` (a substring or glob of the name)."""
    known = suites()
    files: list[Path] = []
    for target in targets or ["thp"]:
        path = Path(target).expanduser()
        if target in known:
            files += sorted(known[target].glob("*.yaml"))
        elif path.is_dir():
            files += sorted(path.glob("*.yaml"))
        elif path.suffix in (".yaml", ".yml"):
            files.append(path)
        else:
            raise UserError(f"{target}: not a suite ({', '.join(known) or 'none'}), a scenario file or a directory "
                            "of them; `kvmlab test --list` shows what there is")
    scenarios = [load(f) for f in files]
    names: dict[str, Path | None] = {}
    for s in scenarios:
        if s.name in names:
            raise UserError(f"{s.path}: name {s.name!r} is also the name of {names[s.name]}; names must be unique")
        names[s.name] = s.path
    if keyword:
        pattern = keyword if any(ch in keyword for ch in "*?[") else f"*{keyword}*"
        scenarios = [s for s in scenarios if fnmatch.fnmatch(s.name, pattern)]
        if not scenarios:
            raise UserError(f"-k {keyword}: no scenario matches; `kvmlab test --list` shows the names")
    return scenarios
