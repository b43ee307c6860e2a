"""A scenario's verdict from what was measured: pure, so every rule is unit-tested.

Order of judgement: skipped (L1 could not set the scenario up) > error (kvmlab or the
VMM failed) > trace incomplete > L1 log not clean > expectations. Every verdict carries
its reasons in the reader's units ("64 MiB written: 32/32 regions mapped as 2 MiB blocks
(1 fault each)").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from lab.analysis import invalidation, mapping, nested, ptdump, retry
from lab.analysis.crash import Crash
from lab.analysis.expect import Judged
from lab.analysis.mapping import G4K, Fault, Granule, Region, Touched
from lab.analysis.trace import UNMAP_EVENT, Trace
from lab.core.status import ERROR, FAIL, NA, PASS, SKIP, Status
from lab.core.versions import versions_match
from lab.shared.units import human_size


@dataclass
class Verdict:
    status: Status
    observed: str = ""
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    regions: dict[int, Region] = field(default_factory=dict)
    faults: int = 0

    @property
    def explanation(self) -> str:
        return "; ".join(self.reasons)

    def counts(self) -> dict[str, int]:
        return dict(mapping.summary(self.regions))


def touched_of(scenario: Judged) -> Touched:
    g = scenario.guest
    return Touched(g.base, g.size, g.stride)


def _access_words(scenario: Judged) -> str:
    passes = scenario.guest.passes
    word = {"read": "read", "write": "written", "read-write": "read and written"}
    if len(passes) == 1:
        return word[passes[0]]
    return " then ".join(word[p] for p in passes)


def phase_regions(scenario: Judged, faults: list[Fault], phase: int,
                  granule: Granule = G4K) -> dict[int, Region]:
    """The touched regions as the faults of one phase alone map them."""
    touched = touched_of(scenario)
    return {a: r for a, r in mapping.infer([f for f in faults if f.phase == phase], touched, None, granule).items()
            if touched.pages_in(a, granule.block)}


def last_mapping(scenario: Judged, faults: list[Fault], granule: Granule = G4K) -> dict[int, Region]:
    """Each touched region as the last phase that faulted in it mapped it: what a dump of
    the table at the end must show (a region that a later phase did not touch again keeps
    the mapping of the one before)."""
    out: dict[int, Region] = {}
    for phase in sorted({f.phase for f in faults}, reverse=True):
        for start, region in phase_regions(scenario, faults, phase, granule).items():
            if start not in out and region.mapping != mapping.NONE:
                out[start] = region
    return out


def check_regions(scenario: Judged, faults: list[Fault], release: str, l0: str = "",
                  granule: Granule = G4K) -> tuple[list[dict[str, Any]], dict[int, Region]]:
    """One check per region expectation: those whose `kernels` condition L1 meets, and whose
    `qemu` condition the L0 QEMU version `l0` ("10.0") meets (all, if `l0` is unknown).
    Regions are `granule`'s level-2 block spans (2 MiB with 4 KiB pages)."""
    touched = touched_of(scenario)
    checks = []
    shown: dict[int, Region] = {}
    for exp in scenario.regions:
        if not versions_match(exp.kernels, release) or (l0 and not versions_match(exp.qemu, l0)):
            continue
        start = exp.start if exp.start is not None else touched.base
        size = exp.size if exp.size is not None else touched.size
        window = (start, start + size)
        chosen = [f for f in faults if exp.phase is None or f.phase == exp.phase]
        regions = {a: r for a, r in mapping.infer(chosen, touched, window, granule).items()
                   if touched.pages_in(a, granule.block)}
        shown.update(regions)
        total = len(regions)
        ok_regions = [r for r in regions.values() if exp.mapping is None or r.mapping == exp.mapping]
        if exp.faults:
            ok_regions = [r for r in ok_regions if exp.faults[0] <= r.counted <= exp.faults[1]]
        # faults [0, 0]: no region may fault here (what compaction must leave alone)
        none_wanted = exp.faults is not None and exp.faults[0] == 0
        ok = (total > 0 or none_wanted) and len(ok_regions) == total
        what = f"{human_size(size)} at {start:#x}: " if exp.start is not None else ""
        what += f"phase {exp.phase}: " if exp.phase is not None else ""
        label = mapping.labels(granule).get(exp.mapping or "", "any mapping")
        counts = sorted({r.counted for r in ok_regions})
        each = ""
        if counts:
            each = f" ({counts[0]} fault{'s' if counts[0] != 1 else ''} each)" if len(counts) == 1 else \
                f" ({counts[0]}-{counts[-1]} faults each)"
        how = ("mapped as " + label) if exp.mapping else "within bounds"
        text = f"{what}{len(ok_regions)}/{total} regions {how}{each}"
        if total == 0 and none_wanted:
            text = f"{what}no region faulted"
        retried = sum(r.retried for r in ok_regions)
        if retried:
            text += f" (+{retried} retried after an mm invalidation, not counted)"
        if not ok:
            bad = [r for r in regions.values() if r not in ok_regions][:3]
            text += "; not: " + ", ".join(f"{r.start:#x} {r.mapping} ({r.evidence()})" for r in bad)
            if total == 0 and not none_wanted:
                text += "; the guest touched no region in this range"
        checks.append({"check": "regions", "expected": exp.describe(), "ok": ok, "text": text,
                       "observed": mapping.describe(regions)})
    return checks, shown


def folio_check(expected: dict[int, tuple[int, int]], seen: dict[str, int] | None) -> dict[str, Any]:
    """Memslot 1's memory by folio size at the end, against the scenario's `folios`."""
    if seen is None:
        return {"check": "folios", "ok": False, "text": "VMM folios: not measured (L1 gave no /proc/kpageflags)"}
    bad = [f"{human_size(size)}: {seen.get(str(size), 0)}, expected {lo if lo == hi else f'{lo}-{hi}'}"
           for size, (lo, hi) in sorted(expected.items()) if not lo <= seen.get(str(size), 0) <= hi]
    have = ", ".join(f"{n} × {human_size(int(size))}" for size, n in sorted(seen.items(), key=lambda kv: int(kv[0])))
    text = f"VMM folios: {have or 'none present'}" + (f" (not as expected: {'; '.join(bad)})" if bad else "")
    return {"check": "folios", "ok": not bad, "text": text}


def evaluate(scenario: Judged, release: str, result: dict[str, Any], trace: Trace | None,
             probe: dict[str, Any] | None, crashes: list[Crash], l0: str = "") -> Verdict:
    if result.get("na"):  # L1 found the kernel without a feature the scenario is about
        return Verdict(NA, "", [result["na"]])
    if result.get("skip"):
        return Verdict(SKIP, "", [result["skip"]])
    if result.get("error"):
        return Verdict(ERROR, "", [f"in L1: {result['error']}"])
    if (probe or {}).get("na"):  # the probe found L1's KVM without what the scenario needs
        return Verdict(NA, "", [(probe or {})["na"]])
    if (probe or {}).get("skip"):  # the lab lacks a resource the probe needs (device memory)
        return Verdict(SKIP, "", [(probe or {})["skip"]])
    unmoved = [piece["why"] for m in (probe or {}).get("mm") or [] if m.get("do") == "move_pages"
               for piece in m.get("pieces") or [] if not piece.get("moved")]
    if unmoved:  # one NUMA node: move_pages had nowhere to move to
        return Verdict(SKIP, "", unmoved[:1])
    if scenario.kernels and not versions_match(scenario.kernels, release):
        return Verdict(NA, "", [f"applies to kernels {scenario.kernels}; L1 runs {release}"])
    if scenario.repeat > 1:
        return _stress(scenario, result.get("repeat") or {}, crashes)
    verdict = Verdict(PASS)
    granule = mapping.granule_of(result.get("l1_page_size"))
    touched = touched_of(scenario)
    faults = judged_faults(trace, release)
    in_range = [f for f in faults if touched.base <= f.ipa < touched.base + touched.size]
    verdict.faults = len(in_range)
    if trace is not None:
        verdict.regions = {a: r for a, r in mapping.infer(faults, touched, None, granule).items()
                           if touched.pages_in(a, granule.block)}
        verdict.observed = mapping.describe(verdict.regions)

    vmm = result.get("vmm") or {}
    problems: list[str] = []
    if vmm.get("timeout"):
        problems.append(f"timed out: the VMM was {vmm['timeout']}")
    if vmm.get("error"):
        problems.append(f"driving the VMM: {vmm['error']}")
    if scenario.kill_after is not None:
        if not vmm.get("killed"):
            problems.append("the VMM ended before it could be killed (kill_after too long?)")
        else:
            verdict.reasons.append(f"VMM killed: {vmm['killed']}")
    elif not vmm.get("timeout") and vmm.get("exit_code") != 0:
        detail = (probe or {}).get("error") or vmm.get("error") or _how_it_ended(vmm)
        if trace is not None and trace.faults:  # how far it got: a crash in phase 2 is not one at start
            detail += (f", after {len(trace.faults)} stage-2 faults (the last in phase "
                       f"{max(f.phase for f in trace.faults)})")
        problems.append(f"the VMM failed: {detail}")
        if vmm.get("fault"):  # the VMM's own stacks at the signal (Python's faulthandler)
            problems.append("the VMM's stacks when it died (vmm-fault.log):\n" + vmm["fault"])
    if problems:
        verdict.status = ERROR
        verdict.reasons = problems + verdict.reasons
        return verdict

    if trace is None or not trace.complete:
        verdict.status = FAIL
        verdict.reasons.insert(0, "trace incomplete: " + ("; ".join(trace.problems) if trace else "no trace"))
        return verdict

    if scenario.clean_log and crashes:
        verdict.status = FAIL
        verdict.reasons.insert(0, _log_line(crashes))
        verdict.checks.append({"check": "clean_log", "ok": False, "text": crashes[0].excerpt})
    elif scenario.clean_log:
        verdict.checks.append({"check": "clean_log", "ok": True, "text": "L1 log clean"})
        if scenario.kill_after is not None:
            verdict.reasons.append("L1 log clean")

    checks, _ = check_regions(scenario, faults, release, l0, granule)
    phases = sorted({r.phase for r in scenario.regions if r.phase is not None})
    if phases:
        # One summary per phase the expectations name: what each phase changed.
        verdict.observed = "; ".join(
            f"phase {p}: " + mapping.describe(phase_regions(scenario, faults, p, granule)) for p in phases)
    verdict.checks += checks
    for c in checks:
        verdict.reasons.append(f"{human_size(touched.size)} {_access_words(scenario)}: {c['text']}"
                               if c["ok"] and len(checks) == 1 else c["text"])
    if scenario.total_faults:
        lo, hi = scenario.total_faults
        retried = sum(f.retry for f in in_range)
        counted = len(in_range) - retried
        ok = lo <= counted <= hi
        more = f" (+{retried} retried after an mm invalidation, not counted)" if retried else ""
        verdict.checks.append({"check": "faults", "ok": ok, "text": f"{counted} faults{more} (expected {lo}-{hi})"})
        verdict.reasons.append(f"{counted} faults in the touched range{more} (expected {lo}-{hi})")
    smaps = scenario.smaps_for(release)
    if smaps:
        seen = ((probe or {}).get("smaps", {}).get("end", {}) or {}).get("1", {})
        for key, (lo, hi) in smaps.items():
            value = seen.get(key, 0) * 1024
            ok = lo <= value <= hi
            verdict.checks.append({"check": f"smaps.{key}", "ok": ok,
                                   "text": f"{key} {human_size(value) if value else '0'}"})
            verdict.reasons.append(f"VMM smaps {key}: {human_size(value) if value else '0'}"
                                   + ("" if ok else f" (expected {human_size(lo)}-{human_size(hi)})"))
    pauses: dict[int, list[str]] = {}
    for action in scenario.actions:
        if action.at.startswith("pause "):
            pauses.setdefault(int(action.at.split()[1]), []).append(action.do)
    if trace is not None and probe and pauses:  # the evidence of what each action invalidated
        recorded = f"kvm:{UNMAP_EVENT}" in ((result.get("trace") or {}).get("events") or [])
        verdict.reasons += invalidation.describe(trace, probe, pauses, recorded)
    if scenario.folios:
        verdict.checks.append(folio_check(scenario.folios, ((probe or {}).get("folios") or {}).get("1")))
        verdict.reasons.append(verdict.checks[-1]["text"])
    if probe and probe.get("l2") is not None:  # a nested run: what the guest hypervisor saw
        remapped = any(a.get("do") == "l2_remap" for a in probe.get("actions") or [])
        threads = Counter(f.tid for f in in_range)
        verdict.checks.append(nested.l2_check(probe["l2"], len(in_range), len(trace.faults), remapped,
                                              [threads[t] for t in sorted(threads)]))
        verdict.reasons.append(verdict.checks[-1]["text"])
    if probe and probe.get("stage2") and probe.get("l2") is None and trace is not None:  # KVM's dump, at the end
        verdict.checks.append(ptdump.cross_check({"stage2_page_tables": probe["stage2"]},
                                                 last_mapping(scenario, faults, granule), "debugfs stage-2"))
        verdict.reasons.append(verdict.checks[-1]["text"])
    if probe and probe.get("shadow_s2"):  # and KVM's own dump of the shadow tables
        verdict.checks.append(ptdump.cross_check(probe["shadow_s2"], verdict.regions))
        verdict.reasons.append(verdict.checks[-1]["text"])
    if any(not c["ok"] for c in verdict.checks):
        verdict.status = FAIL
        failed = [c["text"] for c in verdict.checks if not c["ok"] and c["check"] != "clean_log"]
        verdict.reasons = [r for r in verdict.reasons if r not in failed]
        verdict.reasons = failed + verdict.reasons
    return verdict


def judged_faults(trace: Trace | None, release: str) -> list[Fault]:
    """The trace's faults, with retries marked on a kernel that retries a fault for an
    invalidation of any range of the VMM's mm (lab/analysis/retry.py)."""
    if trace is None:
        return []
    if not trace.unmaps or not versions_match(retry.ANY_RANGE_RETRIES, release):
        return trace.faults
    return retry.mark(trace.faults, trace.unmaps)


def _stress(scenario: Judged, repeat: dict[str, Any], crashes: list[Crash]) -> Verdict:
    """A stress scenario: N runs of the VMM, each killed as asked while its vCPUs fault,
    and L1's log clean. A crash in the log comes first; then a VMM that died by itself
    (a signal it did not get from the runner) or hung; then a run that never faulted."""
    runs = repeat.get("runs", [])
    rate = repeat.get("per_second", 0)
    faults = [r.get("faults", 0) for r in runs]
    killed = sum("killed" in r for r in runs)
    verdict = Verdict(PASS, f"{killed} runs killed ({rate:.2f}/s)", faults=sum(faults))
    text = f"{killed}/{scenario.repeat} VMM runs killed mid-run ({rate:.2f} runs/s in {repeat.get('seconds', 0):.1f} s)"
    if len(runs) < scenario.repeat:
        verdict.status = ERROR
        verdict.reasons = [f"{text}; L1's runner stopped after {len(runs)} runs"]
        return verdict
    ended = [f"run {i + 1}: the VMM {_how_it_ended(r)}" for i, r in enumerate(runs) if "killed" not in r]
    verdict.checks.append({"check": "runs", "ok": not ended, "text": text + "".join(f"; {e}" for e in ended[:3])})
    idle = [i + 1 for i, n in enumerate(faults) if n == 0]
    verdict.checks.append({"check": "faulting", "ok": not idle,
                           "text": f"stage-2 faults per run {min(faults, default=0)}-{max(faults, default=0)} "
                                   f"({sum(faults)} in all)"
                                   + (f"; none in run {', '.join(map(str, idle[:5]))}" if idle else "")})
    if scenario.clean_log:
        verdict.checks.append({"check": "clean_log", "ok": not crashes,
                               "text": crashes[0].excerpt if crashes else "L1 log clean"})
    verdict.reasons = [c["text"] for c in verdict.checks if c["check"] != "clean_log"]
    if scenario.clean_log and crashes:
        verdict.reasons.insert(0, _log_line(crashes))
        verdict.observed += f"; {crashes[0].title}"
    elif scenario.clean_log:
        verdict.reasons.append("L1 log clean")
    if ended:
        verdict.observed += f"; {len(ended)} ended by themselves"
        stacks = [(i + 1, r["fault"]) for i, r in enumerate(runs) if "killed" not in r and r.get("fault")]
        if stacks:  # the first crash's evidence; every run's is in result.json
            verdict.reasons.append(f"the VMM's stacks when run {stacks[0][0]} died:\n{stacks[0][1]}")
    if any(not c["ok"] for c in verdict.checks):
        verdict.status = FAIL
    return verdict


def _how_it_ended(run: dict[str, Any]) -> str:
    if run.get("timeout"):
        return f"was {run['timeout']}"
    if "signal" in run:
        import signal

        try:
            name = signal.Signals(run["signal"]).name
        except ValueError:
            name = "?"
        return f"died of signal {run['signal']} ({name}) after {run.get('seconds', 0):.2f} s"
    return f"exited with status {run.get('exit_code')} after {run.get('seconds', 0):.2f} s"


def _log_line(crashes: list[Crash]) -> str:
    """The first crash in L1's log, and how many more."""
    return f"L1 log: {crashes[0].title}" + (f" (+{len(crashes) - 1} more)" if len(crashes) > 1 else "")


def region_records(regions: dict[int, Region]) -> list[dict[str, Any]]:
    """verdict.json's regions: what reports draw (lab/results), one per region (2 MiB; 32 MiB
    with 16 KiB pages: `size`)."""
    return [{"start": hex(r.start), "size": r.size, "mapping": r.mapping, "faults": r.faults, "retried": r.retried,
             "pages": len(r.pages),
             "kinds": {f"{kind} L{level}": n for (kind, level), n in mapping.by_level(r.kinds)},
             "evidence": r.evidence()} for r in regions.values()]
