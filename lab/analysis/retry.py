"""Stage-2 faults that are retries, not mappings: KVM gave up on a fault because the VMM's
mm was invalidated while the fault was in flight, and the vCPU took the same fault again.

From the code (virt/kvm/kvm_main.c and arch/arm64/kvm/mmu.c, 5.10):
- user_mem_abort() reads kvm->mmu_notifier_seq, faults the page in (for a THP, 2 MiB
  zeroed: milliseconds under TCG), takes mmu_lock and gives up if
  mmu_notifier_retry(): an invalidation is in progress (mmu_notifier_count != 0) or one
  ended since the read (the sequence moved). The guest re-enters and faults again.
- Before 5.13, kvm_mmu_notifier_invalidate_range_start() raises the count for *every*
  range of the mm, inside a memslot or not, and kvm_unmap_hva_range() traces it
  (kvm:kvm_unmap_hva_range). So QEMU freeing its own heap (its RCU thread calls
  malloc_trim()) makes any fault in flight retry. From 5.13 the count is raised only for
  ranges that overlap a memslot, so such retries are no longer expected.

What the trace can prove, per vCPU thread (the event's pid): a fault at the same page with
the same syndrome as that thread's previous fault made no progress, so the previous one
was given up. It was given up for an invalidation only if one began after the thread's
last fault that did succeed (its check saw no invalidation in progress) and before this
fault. Such a fault is marked `retry`; it is counted and shown, but not against a bound on
how many faults a mapping takes. Nothing is discounted without an invalidation in the
trace, and nothing on 5.13 or later.
"""

from __future__ import annotations

import bisect
import dataclasses

from lab.analysis.mapping import PAGE, Fault

#: kernels that retry a stage-2 fault on an invalidation of any range of the VMM's mm
ANY_RANGE_RETRIES = "<5.13"


def mark(faults: list[Fault], unmaps: list[int]) -> list[Fault]:
    """`faults` (in time order) with each retry's `retry` set; `unmaps` are the
    timestamps of kvm_unmap_hva_range events."""
    if not unmaps:
        return faults
    starts = sorted(unmaps)
    out = list(faults)
    last: dict[int, int] = {}  # thread -> index of its previous fault
    succeeded_before: dict[int, int] = {}  # thread -> ts of the fault before its current chain
    for i, f in enumerate(faults):
        j = last.get(f.tid)
        same = j is not None and faults[j].ipa // PAGE == f.ipa // PAGE and faults[j].esr == f.esr \
            and faults[j].phase == f.phase
        if not same:
            succeeded_before[f.tid] = faults[j].ts if j is not None else -1
        elif _began_between(starts, succeeded_before[f.tid], f.ts):
            out[i] = dataclasses.replace(f, retry=True)
        last[f.tid] = i
    return out


def _began_between(starts: list[int], lo: int, hi: int) -> bool:
    k = bisect.bisect_right(starts, lo)
    return k < len(starts) and starts[k] < hi
