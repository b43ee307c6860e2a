"""A nested run's own evidence: what kvmlab's guest hypervisor (L2 at virtual EL2,
images/l2/gh.S) counted, beside L1's trace. Pure, like the rest of lab/analysis.

L1's kvm_guest_fault trace holds three kinds of stage-2 faults in a nested run:
- L3's, on KVM's shadow stage-2 (their IPA is L3's): the ones in the touched range;
- L2's own accesses (its code, stack and tables, and L3's code, all in the payload's
  memslot), outside the touched range;
- those KVM handed back to L2 because L2's own tables had no entry (or one that did not
  allow the access): L2 counts them, and with the stage-2 kvmlab writes there should be
  none, so one is a failure with its ESR and addresses.
"""

from __future__ import annotations

from typing import Any

from lab.analysis.esr import Esr


def l2_check(reports: list[dict[str, int]], l3_faults: int, all_faults: int, remapped: bool = False,
             by_thread: list[int] | None = None) -> dict[str, Any]:
    """The check "L2's stage-2 let L3 run": no abort handed back to L2, no unexpected
    exception in it; the text gives the three counts. After a remap of L2's stage-2
    (`remapped`: the VMM rewrote L2's tables at a pause), L2 must also have invalidated it
    (gh.S counts its TLBI IPAS2E1IS), else L3 ran on on the stale shadow. `by_thread`: L3's
    faults per vCPU thread, shown where there are several (two L3 guests that touch the
    same range under two VMIDs fault once a region each: two shadow MMUs)."""
    aborts = sum(r.get("s2_aborts", 0) for r in reports)
    hvcs = sum(r.get("hvcs", 0) for r in reports)
    tlbis = sum(r.get("tlbis", 0) for r in reports)
    odd = [(i, r) for i, r in enumerate(reports) if r.get("unexpected")]
    text = (f"L1's trace: {l3_faults} stage-2 faults of L3 in the touched range (shadow stage-2), "
            f"{all_faults - l3_faults} elsewhere (L2's own and L3's code); handed back to L2: {aborts}; "
            f"L3's calls to L2: {hvcs}")
    if by_thread and len(by_thread) > 1:
        text += f"; L3's faults by vCPU thread: {' + '.join(map(str, by_thread))}"
    if remapped or tlbis:
        text += f"; L2 remapped its stage-2 and invalidated {tlbis} leaves (TLBI IPAS2E1IS)"
    for i, r in [(i, r) for i, r in enumerate(reports) if r.get("s2_aborts")][:1] + odd[:1]:
        what = (f"unexpected exception (vector {r['unexpected'] - 1})" if r.get("unexpected")
                else "the last stage-2 abort handed back")
        text += (f"; vCPU {i}, {what}: ESR {r.get('esr', 0):#x} ({Esr(r.get('esr', 0)).describe()}), "
                 f"FAR {r.get('far', 0):#x}, L3 IPA {ipa_of_hpfar(r.get('hpfar', 0)):#x}")
    return {"check": "l2_hypervisor", "ok": aborts == 0 and not odd and (tlbis > 0 or not remapped), "text": text,
            "counts": {"l3": l3_faults, "l2_own": all_faults - l3_faults, "handed_back": aborts, "l3_calls": hvcs,
                       "l2_tlbis": tlbis, "by_thread": list(by_thread or [])}}


def ipa_of_hpfar(hpfar: int) -> int:
    """HPFAR_EL2.FIPA (bits 47:4) holds the faulting IPA's bits 51:12."""
    return ((hpfar >> 4) & ((1 << 44) - 1)) << 12
