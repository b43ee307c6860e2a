"""The VMM actions of the host-L1 contract (lab/shared/contract.py, which re-exports all
of this): the actions a scenario can ask of a VMM, the keys each takes, the memory
operations inside them, and the checks of every key and value. Standard library only, no
effects at import; it reaches L1 in the tools image with the rest of lab/shared."""

from __future__ import annotations

from typing import Any

from lab.shared import codec
from lab.shared.codec import ContractError, field, record
from lab.shared.units import MiB

#: madvise() advice by name (the generic Linux values, which arm64 uses).
MADVICE = {"normal": 0, "dontneed": 4, "remove": 9, "dontfork": 10, "hugepage": 14, "nohugepage": 15,
           "pageout": 21, "populate_read": 22, "populate_write": 23, "collapse": 25}
PROTS = ("none", "read", "write")
ACCESSES = ("read", "write")
#: What a memory operation (an `op` of churn or fork_child) does to each range.
OPS = ("madvise", "mprotect", "munmap", "remap")


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
    "collapse": ActionSpec(("probe",), _RANGE,
                           doc="MADV_COLLAPSE (6.1+): the range's 4 KiB pages collapsed into huge pages now"),
    "khugepaged": ActionSpec(("probe",), ("seconds",),
                             doc="khugepaged made to scan without pause until it has been twice through every mm "
                                 "(at most `seconds`, 60 by default); its settings then put back"),
    "compact": ActionSpec(("probe",), (), doc="every zone of L1 compacted (/proc/sys/vm/compact_memory)"),
    "move_pages": ActionSpec(("probe",), _RANGE + ("node",),
                             doc="move_pages() the range to NUMA node `node` (default: each page to the next node "
                                 "after its own); with one node in L1 nothing can move, and the probe says so"),
    "split": ActionSpec(("probe",), _RANGE,
                        doc="split_huge_pages (debugfs) on the range: its huge pages split, still mapped "
                            "(before 5.13: every THP of L1)"),
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
    #: sleep: 1 s when not given; dirty_rate: 10 s; khugepaged: 60 s at most
    seconds: float | None = None
    bandwidth: int = 4 * MiB
    #: move_pages: the NUMA node to move to (None: each page to the next node after its own)
    node: int | None = None

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
    if name == "node":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 64:
            raise ContractError(key, value, "a NUMA node number from 0")
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
