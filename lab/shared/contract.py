"""The one contract between the host and L1: the job the host sends into L1, the results L1
sends back, the memory backings and the VMM actions with the keys each takes.

Standard library only, no effects at import. The host imports it as lab.shared.contract;
the tools image ships this same file into L1 (tools/lab/shared/contract.py) and L1's
runner (images/l1/python/l1) imports it under the same name. The host checks a scenario's
keys against these tables when it loads the file (a mistake is exit 2, naming the file and
the key); L1 decodes the job with `decode` and refuses one that does not match (an error
in result.json naming the key), so the two sides cannot drift apart.

Sizes and addresses here are bytes (ints): the host parses what people write (4K, 2M).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, TypeVar

from lab.shared import codec
from lab.shared.codec import ContractError as ContractError  # re-exported: both sides catch it from here
from lab.shared.codec import field, record
from lab.shared.units import GiB, KiB, MiB

T = TypeVar("T")


# -- memory backings --------------------------------------------------------------------
@record
class Backing:
    """How a probe memslot's memory is made (names as in tools/testing/selftests/kvm/lib,
    vm_mem_backing_src_type)."""

    name: str
    #: anonymous (MAP_PRIVATE), shmem (MAP_SHARED anonymous), memfd, hugetlb (MAP_HUGETLB)
    kind: Literal["anonymous", "shmem", "memfd", "hugetlb"]
    #: the madvise() given to the whole mapping, if any
    advice: str | None = None
    #: the huge page size of a hugetlb backing (ipa, size and offset are multiples of it)
    huge: int = 0


BACKINGS: dict[str, Backing] = {b.name: b for b in (
    Backing("anonymous", "anonymous"),
    Backing("anonymous_thp", "anonymous", "hugepage"),
    Backing("anonymous_nothp", "anonymous", "nohugepage"),
    Backing("shmem", "shmem"),
    Backing("shmem_thp", "shmem", "hugepage"),
    Backing("memfd", "memfd"),
    Backing("memfd_thp", "memfd", "hugepage"),
    Backing("hugetlb_64k", "hugetlb", huge=64 * KiB),
    Backing("hugetlb_2m", "hugetlb", huge=2 * MiB),
    Backing("hugetlb_32m", "hugetlb", huge=32 * MiB),
    Backing("hugetlb_1g", "hugetlb", huge=GiB),
)}

#: madvise() advice by name (the generic Linux values, which arm64 uses).
MADVICE = {"normal": 0, "dontneed": 4, "remove": 9, "dontfork": 10, "hugepage": 14, "nohugepage": 15,
           "pageout": 21, "populate_read": 22, "populate_write": 23, "collapse": 25}
PROTS = ("none", "read", "write")
ACCESSES = ("read", "write")
#: What a memory operation (an `op` of churn or fork_child) does to each range.
OPS = ("madvise", "mprotect", "munmap", "remap")
VMMS = ("probe", "qemu")


# -- actions ----------------------------------------------------------------------------
@record
class ActionSpec:
    """One VMM action: which VMMs do it, and the keys it takes besides `do` and `at`."""

    vmms: tuple[str, ...]
    keys: tuple[str, ...]
    #: keys it cannot do without
    required: tuple[str, ...] = ()
    doc: str = ""


_RANGE = ("slot", "offset", "size", "every")
ACTIONS: dict[str, ActionSpec] = {
    "prefault": ActionSpec(("probe",), _RANGE + ("access",), doc="touch the range from the VMM (write or read)"),
    "dirty_log": ActionSpec(("probe",), ("slot", "on"), doc="turn the memslot's dirty logging on or off"),
    "dirty_pages": ActionSpec(("probe",), ("slot",), doc="KVM_GET_DIRTY_LOG; the count goes into probe.json"),
    "madvise": ActionSpec(("probe",), _RANGE + ("advice",), ("advice",), doc="madvise() the range"),
    "mprotect": ActionSpec(("probe",), _RANGE + ("prot",), doc="mprotect() the range (prot: read by default)"),
    "munmap": ActionSpec(("probe",), _RANGE, doc="munmap() the range"),
    "fork_child": ActionSpec(("probe",), ("slot", "ops"), ("ops",),
                             doc="a child process applies `ops` to its copy and stays alive"),
    "alias": ActionSpec(("probe",), ("slot", "offset", "access"),
                        doc="map the memslot's memfd again at `offset` (4K by default) and touch it"),
    "smaps": ActionSpec(("probe",), ("label",), doc="record /proc/self/smaps for every memslot"),
    "sleep": ActionSpec(("probe", "qemu"), ("seconds",), doc="wait (1 s by default)"),
    "churn": ActionSpec(("probe",), _RANGE + ("op", "ops", "advice", "prot"),
                        doc="a thread repeating `op` (or each of `ops` in turn) while the vCPUs run"),
    "segfault": ActionSpec(("probe",), (), doc="the probe dereferences NULL: a planted VMM crash, to see its evidence"),
    "migrate": ActionSpec(("qemu",), ("bandwidth",), doc="QEMU migrates to a file, slowly (dirty logging on)"),
    "dirty_rate": ActionSpec(("qemu",), ("seconds",), doc="QEMU's calc-dirty-rate"),
}
#: The keys each memory operation takes besides `op`.
OP_KEYS: dict[str, tuple[str, ...]] = {
    "madvise": ("offset", "size", "every", "advice"),
    "mprotect": ("offset", "size", "every", "prot"),
    "munmap": ("offset", "size", "every"),
    "remap": ("offset", "size", "every"),
}
#: Keys whose values are sizes in bytes (the host parses 4K, 2M; the job carries ints).
SIZE_KEYS = ("offset", "size", "every", "bandwidth")
AT_POINTS = "start, end or 'pause N' (N from 1 to 4: the guest's N-th pause)"


@record
class Op:
    op: str
    offset: int = 0
    size: int | None = None
    every: int | None = None
    advice: str | None = None
    prot: str = "read"


@record
class Action:
    do: str
    at: str = "start"
    slot: int = 1
    offset: int | None = None
    size: int | None = None
    every: int | None = None
    access: str = "write"
    on: bool = True
    advice: str | None = None
    prot: str = "read"
    op: str | None = None
    ops: list[Op] = field(default_factory=list)
    label: str = "at"
    #: sleep: 1 s when not given; dirty_rate: 10 s
    seconds: float | None = None
    bandwidth: int = 4 * MiB

    def as_op(self) -> Op:
        """A madvise/mprotect/munmap action (or a churn with one `op`) as a memory operation."""
        return Op(self.op or (self.do if self.do in OPS else "madvise"), self.offset or 0, self.size, self.every,
                  self.advice, self.prot)


def _size(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ContractError(key, value, "a size in bytes")
    return value


def _choice(key: str, value: Any, options: Any) -> str:
    if value not in options:
        raise ContractError(key, value, "one of " + ", ".join(options))
    return str(value)


#: The keys whose value is one of a list.
CHOICES: dict[str, tuple[str, ...]] = {"access": ACCESSES, "advice": tuple(MADVICE), "prot": PROTS, "op": OPS}


def _check_key(key: str, name: str, value: Any) -> Any:
    """The value of one action or op key, checked (sizes already in bytes)."""
    if name in SIZE_KEYS:
        return _size(key, value)
    if name == "slot":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ContractError(key, value, "the number of a memslot (1 = the first)")
        return value
    if name in CHOICES:
        return _choice(key, value, CHOICES[name])
    if name == "on":
        if not isinstance(value, bool):
            raise ContractError(key, value, "true or false")
        return value
    if name == "label":
        if not isinstance(value, str) or not value:
            raise ContractError(key, value, "a word")
        return value
    if name == "seconds":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
            raise ContractError(key, value, "a number of seconds from 0 to 3600")
        return float(value)
    raise ContractError(key, value, "a known key")  # a table above names a key not handled here


def check_op(data: Any, key: str) -> Op:
    if not isinstance(data, dict) or "op" not in data:
        raise ContractError(key, data, "a mapping with `op` (" + ", ".join(OPS) + ")")
    op = _choice(f"{key}.op", data["op"], OPS)
    values: dict[str, Any] = {"op": op}
    for name, value in data.items():
        if name == "op":
            continue
        if name not in OP_KEYS[op]:
            raise ContractError(f"{key}.{name}", value, "", ("op",) + OP_KEYS[op])
        values[name] = _check_key(f"{key}.{name}", name, value)
    if op == "madvise" and "advice" not in values:
        raise ContractError(f"{key}.advice", None, "the advice for op madvise (" + ", ".join(MADVICE) + ")")
    return Op(**values)


def check_action(data: Any, key: str, vmm: str | None = None) -> Action:
    """One action, every key checked against ACTIONS (sizes already in bytes); with `vmm`,
    also that this VMM does the action."""
    if not isinstance(data, dict) or "do" not in data:
        raise ContractError(key, data, "a mapping with at least `do` (and `at`)")
    do = _choice(f"{key}.do", data["do"], tuple(ACTIONS))
    spec = ACTIONS[do]
    if vmm is not None and vmm not in spec.vmms:
        raise ContractError(f"{key}.do", do, f"an action the {vmm} VMM does: "
                            + ", ".join(n for n, s in ACTIONS.items() if vmm in s.vmms))
    values: dict[str, Any] = {"do": do}
    for name, value in data.items():
        if name == "do":
            continue
        where = f"{key}.{name}"
        if name == "at":
            if not isinstance(value, str) or not (value in ("start", "end") or (
                    value.startswith("pause ") and value[6:].isdigit() and 1 <= int(value[6:]) <= 4)):
                raise ContractError(where, value, AT_POINTS)
            values["at"] = value
        elif name not in spec.keys:
            raise ContractError(where, value, "", ("do", "at") + spec.keys)
        elif name == "ops":
            if not isinstance(value, list) or not value:
                raise ContractError(where, value, "a list of memory operations ({op: ..., ...})")
            values["ops"] = [check_op(op, f"{where}[{i}]") for i, op in enumerate(value)]
        else:
            values[name] = _check_key(where, name, value)
    for name in spec.required:
        if name not in values:
            raise ContractError(f"{key}.{name}", None, f"`{name}` for {do}")
    if do == "churn" and "ops" not in values and values.get("op", "madvise") == "madvise" and "advice" not in values:
        raise ContractError(f"{key}.advice", None, "the advice for churn's op madvise, or `ops`")
    return Action(**values)


def action_json(action: Action) -> dict[str, Any]:
    """An action as the job carries it: only what differs from the defaults."""
    out: dict[str, Any] = {"do": action.do, "at": action.at}
    for f in codec.fields(Action):
        value = getattr(action, f.name)
        if f.name not in out and value != f.make_default():
            out[f.name] = [_drop_defaults(op) for op in value] if f.name == "ops" else value
    return out


def _drop_defaults(op: Op) -> dict[str, Any]:
    return {f.name: getattr(op, f.name) for f in codec.fields(Op)
            if f.name == "op" or getattr(op, f.name) != f.default}


# -- the job ----------------------------------------------------------------------------
#: A VMM still making progress at its timeout (stage-2 faults or console output still
#: advancing) is given more time, up to this many times the timeout; one that is not is
#: killed at the timeout. The host waits for L1 accordingly.
TIMEOUT_STRETCH = 3

@record
class L1Settings:
    """What L1's mm is set to for one scenario (None: left as it is), restored afterwards."""

    thp: str | None = None
    defrag: str | None = None
    shmem_thp: str | None = None
    khugepaged: bool = False
    #: huge pages to reserve: {size in KiB as text: count}
    hugepages: dict[str, int] = field(default_factory=dict)


@record
class Trace:
    events: list[str] = field(default_factory=lambda: ["kvm:kvm_guest_fault"])
    #: the per-CPU ring buffer size
    buffer_kb: int = 4096
    #: trace only the VMM's process tree
    follow: bool = True


@record
class Memslot:
    slot: int
    ipa: int
    size: int
    backing: str = "anonymous"
    offset: int = 0
    dirty_log: bool = False


@record
class ProbeJob:
    """probe-job.json: what the probe VMM (l1.probe) sets up and runs."""

    vcpus: int
    code_ipa: int
    #: the patched touch payload (a guest path) and where the report goes
    payload: str
    report: str
    memslots: list[Memslot]
    timeout: float = 60.0
    #: the PL011 the payload prints to (the guest's MMIO address)
    uart: int = 0x0900_0000
    actions: list[Action] = field(default_factory=list)


@record
class QemuJob:
    """L1's QEMU as the VMM (l1.qemu_vmm): its RAM, the L2 it boots, the actions at pauses."""

    memory: int
    kernel: str
    backend: Literal["ram", "memfd", "file"] = "ram"
    prealloc: bool = False
    smp: int = 1
    initrd: str | None = None
    append: str | None = None
    actions: list[Action] = field(default_factory=list)


@record
class ScenarioJob:
    """job.json: one scenario (or one `kvmlab trace` command) for l1.scenario."""

    vmm: Literal["probe", "qemu", "command"]
    name: str = ""
    timeout: float = 120.0
    l1: L1Settings = field(default_factory=L1Settings)
    trace: Trace = field(default_factory=Trace)
    kill_after: float | None = None
    kill_after_max: float | None = None
    repeat: int = 1
    qemu: QemuJob | None = None
    #: vmm command: the shell command line traced
    command: str | None = None


# -- what L1 sends back -----------------------------------------------------------------
class VmmOutcome(TypedDict, total=False):
    """How the VMM ended (one run of it, in a stress run with its faults counted)."""

    seconds: float
    faults: int
    exit_code: int
    signal: int
    killed: str
    timeout: str
    error: str
    pauses: int
    actions: list[dict[str, Any]]
    #: a VMM that died of a signal: its threads' stacks at that moment (faulthandler)
    fault: str


class Result(TypedDict, total=False):
    """result.json, written last by l1.scenario (the host waits for it)."""

    started: float
    seconds: float
    setup_seconds: float
    l1: dict[str, Any]
    l1_release: str
    skip: str
    vmm: VmmOutcome
    repeat: dict[str, Any]
    trace: dict[str, Any]
    error: str
    traceback: str


class ProbeReport(TypedDict, total=False):
    """probe.json, written by the probe VMM."""

    events: list[Any]
    uart: str
    pauses: int
    actions: list[dict[str, Any]]
    dirty_pages: dict[str, list[int]]
    smaps: dict[str, Any]
    exits: dict[str, int]
    memslots: list[dict[str, Any]]
    setup_seconds: float
    guest_seconds: float
    vmstat: dict[str, int]
    alias: dict[str, Any]
    churn_rounds: int
    efault_retries: int
    system_event: Any
    error: str | None


# -- encoding and decoding ---------------------------------------------------------------
def encode(job: Any) -> Any:
    """A job (records, lists, dicts) as JSON data; actions without their defaults."""
    return codec.encode(job, {Action: action_json})


def decode(cls: type[T], data: Any, key: str = "job") -> T:
    """JSON data as `cls`, every key and type checked: an unknown key, a missing one or a
    value of the wrong type raises ContractError naming it; actions are checked against
    ACTIONS."""
    return codec.decode(cls, data, key, {Action: check_action})
