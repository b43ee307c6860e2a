"""The one contract between the host and L1: the job the host sends into L1, the results L1
sends back, the memory backings, and the VMM actions with the keys each takes
(lab/shared/actions.py).

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

# The VMM actions live in lab/shared/actions.py and are part of this contract: re-exported,
# so that both sides import the contract from here alone.
from lab.shared.actions import ACCESSES as ACCESSES
from lab.shared.actions import ACTIONS as ACTIONS
from lab.shared.actions import AT_POINTS as AT_POINTS
from lab.shared.actions import CHOICES as CHOICES
from lab.shared.actions import MADVICE as MADVICE
from lab.shared.actions import OP_KEYS as OP_KEYS
from lab.shared.actions import OPS as OPS
from lab.shared.actions import PROTS as PROTS
from lab.shared.actions import SIZE_KEYS as SIZE_KEYS
from lab.shared.actions import Action as Action
from lab.shared.actions import ActionSpec as ActionSpec
from lab.shared.actions import Op as Op
from lab.shared.actions import action_json as action_json
from lab.shared.actions import check_action as check_action
from lab.shared.actions import check_op as check_op
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
    #: anonymous (MAP_PRIVATE), shmem (MAP_SHARED anonymous), memfd, hugetlb (MAP_HUGETLB),
    #: guest_memfd (KVM_CREATE_GUEST_MEMFD, mmapped shared: 6.18+ for ordinary arm64 VMs)
    #: pfnmap (the lab's device memory: a PCI BAR mmapped from sysfs, VM_PFNMAP | VM_IO)
    kind: Literal["anonymous", "shmem", "memfd", "hugetlb", "guest_memfd", "pfnmap"]
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
    Backing("guest_memfd", "guest_memfd"),
    Backing("pci_bar", "pfnmap"),
)}

VMMS = ("probe", "qemu")


# -- the job ----------------------------------------------------------------------------
#: A VMM still making progress at its timeout (stage-2 faults or console output still
#: advancing) is given more time, up to this many times the timeout; one that is not is
#: killed at the timeout. The host waits for L1 accordingly.
TIMEOUT_STRETCH = 3
#: In a run directory, beside the raw pages (cpuN.raw): the format of every traced event,
#: as {"header_page": TEXT, "SYSTEM:EVENT": TEXT}, one file (each file made in the share
#: costs L1 15-25 ms under TCG; they were a file each before). Runs recorded before
#: TRACE_RAW; since, the formats are in result.json's trace ("formats").
TRACE_FORMATS = "formats.json"
#: In a run directory: every CPU's raw ring-buffer pages in one file, CPU after CPU, where
#: result.json's trace says ("spans": {CPU: [offset, length]}); one file made in the share
#: instead of one per CPU plus the formats.
TRACE_RAW = "trace.raw"

@record
class L1Settings:
    """What L1's mm is set to for one scenario (None: left as it is), restored afterwards."""

    thp: str | None = None
    defrag: str | None = None
    shmem_thp: str | None = None
    khugepaged: bool = False
    #: huge pages to reserve: {size in KiB as text: count}
    hugepages: dict[str, int] = field(default_factory=dict)
    #: multi-size THP (6.8+): {folio size in KiB as text: mode} for anonymous memory
    #: (transparent_hugepage/hugepages-SIZEkB/enabled) and for shmem (.../shmem_enabled, 6.11+)
    mthp: dict[str, str] = field(default_factory=dict)
    shmem_mthp: dict[str, str] = field(default_factory=dict)


@record
class Trace:
    events: list[str] = field(default_factory=lambda: ["kvm:kvm_guest_fault"])
    #: recorded too where the kernel has them: each invalidation of the VMM's mm (before
    #: 5.13 any one makes every stage-2 fault in flight retry; lab/analysis/retry.py)
    optional: list[str] = field(default_factory=lambda: ["kvm:kvm_unmap_hva_range"])
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
    #: the payload is kvmlab's guest hypervisor, run at virtual EL2 (a nested scenario)
    el2: GuestHypervisor | None = None
    #: KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE (6.4+), set before any memslot: turning dirty
    #: logging on splits the memslot's blocks at once, in chunks of this size (0: off)
    eager_split: int = 0
    #: read each memslot's folios at the end (pagemap and kpageflags: a lookup per page,
    #: so only when the scenario expects folios)
    folios: bool = False


@record
class Blob:
    """A file (a guest path) loaded into the payload's memslot at `offset`."""

    path: str
    offset: int


@record
class GuestHypervisor:
    """A probe job whose payload is kvmlab's guest hypervisor (images/l2/gh.S): its vCPUs
    have KVM_ARM_VCPU_HAS_EL2 and an in-kernel vGICv3, and start at EL2h in it."""

    #: the payload's memslot (slot 0) size, and what is loaded into it besides the
    #: payload: L3's code, L2's stage-2 tables (lab/shared/stage2.py)
    memory: int
    blobs: list[Blob]
    #: where in slot 0 the guest hypervisor leaves its per-vCPU reports (gh.S's R_*)
    report: int
    #: L2 remapping its stage-2 mid-run: at this action point ('pause N') the probe writes
    #: `remap` (L2's tables as the remap leaves them) over the tables, before L3 resumes
    #: and asks L2 to invalidate (gh.S: KVMLAB_L2_TLBI)
    remap: Blob | None = None
    remap_at: str = ""


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
    #: the page sizes (bytes) of an L1 kernel the scenario's expectations are written for
    #: (a scenario's `granules`); on another, L1 reports it n/a. Empty: any.
    granules: list[int] = field(default_factory=list)


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
    #: seconds from the start to the end of each step that ran: job, l1_settings, trace_on,
    #: vmm_started, vmm_done, trace_off, dumped, restored
    phases: dict[str, float]
    l1: dict[str, Any]
    l1_release: str
    #: L1's page size: 4096, or 16384 for Debian's arm64-16k flavour
    l1_page_size: int
    #: the resident runner that forked the scenario's process: {"pid": P, "job": N}
    runner: dict[str, int]
    skip: str
    #: the kernel lacks a feature the scenario is about (mTHP controls, a huge page size)
    na: str
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
    #: the kernel's KVM lacks what the scenario needs (guest_memfd): nothing ran
    na: str
    #: each memslot's memory at the end by folio size: {slot: {bytes: count}} (l1/mm.py)
    folios: dict[str, dict[str, int]]
    #: what the mm actions (collapse, khugepaged, compact, split) did, in order
    mm: list[dict[str, Any]]
    #: a nested run: the guest hypervisor's counts per vCPU (l1.probe.L2_REPORT)
    l2: list[dict[str, int]]
    #: a kernel with CONFIG_PTDUMP_STAGE2_DEBUGFS: KVM's dump of the VM's stage-2 at the end
    stage2: str
    #: a nested run on a kernel with CONFIG_PTDUMP_STAGE2_DEBUGFS: KVM's dump of each
    #: shadow MMU at the end, by debugfs file name (lab/analysis/ptdump.py)
    shadow_s2: dict[str, str]


# -- encoding and decoding ---------------------------------------------------------------
def encode(job: Any) -> Any:
    """A job (records, lists, dicts) as JSON data; actions without their defaults."""
    return codec.encode(job, {Action: action_json})


def decode(cls: type[T], data: Any, key: str = "job") -> T:
    """JSON data as `cls`, every key and type checked: an unknown key, a missing one or a
    value of the wrong type raises ContractError naming it; actions are checked against
    ACTIONS."""
    return codec.decode(cls, data, key, {Action: check_action})
