"""Running scenarios on a lab that is up, and keeping everything they produce.

Per scenario: a run directory in the lab's share (job files, the patched payload), one
`python3 -m l1.scenario` in L1, then on the host: the raw trace decoded and checked for
losses, the L1 log lines the scenario produced scanned for crashes, the verdict, and the
run directory moved into the results directory:

    RESULTS/summary.json        the run: lab, kernel, QEMU, every scenario's verdict
    RESULTS/l1-console.log      L1's whole console log
    RESULTS/NAME/               job.json, result.json, trace.raw (every CPU's raw trace pages),
                                probe.json or l2-console.log, l1.log, verdict.json
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from lab.analysis import crash
from lab.analysis import trace as tracefile
from lab.analysis.mapping import describe, granule_of
from lab.analysis.verdict import Verdict, evaluate, judged_faults, phase_regions, region_records
from lab.builder import payload
from lab.builder.build import Builder, Tools
from lab.core.status import BAD, ERROR, FAIL, NA, PASS, SKIP, count
from lab.core.versions import versions_match
from lab.machine import l1runner
from lab.machine.boot import KVM_MODE_REPORTS, ipa_limit
from lab.machine.lab import Lab
from lab.machine.logs import read_from, tail
from lab.machine.qemu import l0_version
from lab.scenarios import RESULTS_FORMAT, staging
from lab.scenarios.jobs import l2_files, make_probe_job, nested_files, scenario_job, touch_params
from lab.scenarios.l2 import level_maps
from lab.scenarios.model import Scenario
from lab.scenarios.result import ScenarioResult, counted
from lab.scenarios.staging import REFUSED
from lab.shared import contract
from lab.shared.contract import TIMEOUT_STRETCH
from lab.shared.files import write_json

#: Lines of the L1 console kept in the verdict when the lab dies.
CONSOLE_TAIL = 20


#: How a suite is shared out (runner, scenarios, tools, start time): lab/orchestrate/pool.py.
Spread = Callable[["Runner", list[Scenario], Tools, float], None]


class Runner:
    def __init__(self, lab: Lab, results: Path, builder: Builder | None = None,
                 on_result: Callable[[ScenarioResult], None] | None = None, progress=None,
                 targets: list[str] | None = None, on_start: Callable[[Scenario], None] | None = None,
                 count: int = 1, shard: dict[str, Any] | None = None):
        self.lab = lab
        #: runs of each scenario (`kvmlab test --count N`)
        self.count = count
        self.on_start = on_start
        self.results = results
        self.builder = builder or Builder()
        self.on_result = on_result
        self.progress = progress
        state = lab.require_up()
        self.state = state
        self.release = state.get("ready", {}).get("release", "")
        #: the L0 QEMU's version ("10.0"), for expectations with a `qemu:` condition
        self.l0 = ".".join(map(str, l0_version(state.get("qemu_version") or "") or ()))
        self.summary: dict[str, Any] = {
            "format": RESULTS_FORMAT, "lab": lab.name, "kernel": state["kernel"]["label"], "release": self.release,
            "kvm_mode": state.get("ready", {}).get("kvm_mode"),
            "kvm_ipa_bits": ipa_limit(state.get("ready", {}).get("kvm_log") or []),
            "qemu_version": state.get("qemu_version"),
            **{f"l1_{k}": state["config"]["lab"].get(k, 0) for k in ("cpus", "memory", "hugepages_1g")},
            "l1_thp_at_boot": state.get("ready", {}).get("thp"), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "targets": list(targets or ["thp"]), "results_dir": str(results), "scenarios": [],
        }
        if shard:
            #: `--shard K/N`: which share this is, of which scenarios, by which durations
            #: (lab/scenarios/shard.py): `kvmlab report` merges the shards and finds any missing
            self.summary["shard"] = shard

    # -- set-up --------------------------------------------------------------------------
    def sync_tools(self) -> Tools:
        """The tools into the share, once per version (lab/machine/l1runner.py)."""
        tools = self.builder.tools()
        l1runner.sync_tools(self.lab.paths.share, tools)
        return tools

    def run(self, scenarios: list[Scenario], spread: Spread | None = None) -> dict[str, Any]:
        """Runs `scenarios` in order on this lab, or as `spread` shares them out (over more
        labs: lab/orchestrate/pool.py). Returns the summary (also in summary.json)."""
        self.results.mkdir(parents=True, exist_ok=True)
        tools = self.sync_tools()
        self.summary["tools_key"] = tools.key
        started = time.monotonic()
        try:
            if spread is not None:
                spread(self, scenarios, tools, started)
            else:
                for i, scenario in enumerate(scenarios):
                    if self.on_start:
                        self.on_start(scenario)
                    result = self.run_one(scenario, tools)
                    self.summary["scenarios"].append(result.as_dict())
                    self.save_summary(time.monotonic() - started)
                    if self.on_result:
                        self.on_result(result)
                    if result.status == ERROR and not self.lab.is_up():
                        self.lab_died(scenario, scenarios[i + 1:])
                        break
        finally:
            self.save_summary(time.monotonic() - started)
            try:
                shutil.copyfile(self.lab.paths.console_log, self.results / "l1-console.log")
            except OSError:
                pass
        return self.summary

    def lab_died(self, during: Scenario, rest: list[Scenario]) -> None:
        """The lab is gone: what was measured stays; the scenarios not reached are listed
        as errors (not run), so every report shows them."""
        self.summary["lab_died"] = {"during": during.name, "not_run": [s.name for s in rest],
                                    "console_tail": tail(self.lab.paths.console_log, CONSOLE_TAIL)}
        for scenario in rest:
            artefacts = self.results / scenario.name
            artefacts.mkdir(parents=True, exist_ok=True)
            out = ScenarioResult(scenario.name, scenario.description, scenario.expected, ERROR,
                                 reasons=[f"not run: the lab died during {during.name}"],
                                 source=_source_name(scenario.path))
            self.summary["scenarios"].append(self._finish(out, artefacts, time.monotonic()).as_dict())
            if self.on_result:
                self.on_result(out)

    def save_summary(self, seconds: float) -> None:
        statuses = [s["status"] for s in self.summary["scenarios"]]
        self.summary["seconds"] = round(seconds, 2)
        self.summary["counts"] = count(statuses)
        self.summary["passed"] = not any(s in BAD for s in statuses)
        write_json(self.results / "summary.json", self.summary)

    # -- one scenario --------------------------------------------------------------------
    def execute(self, scenario: Scenario, tools: Tools, name: str, l1_overrides: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """Runs the scenario once in L1; returns what it left (artefacts moved to the results)."""
        where = staging.run_dir(self.lab, name)
        params = touch_params(scenario)
        qemu = None
        if scenario.vmm == "probe":
            blob, offset = tools.payload("touch.bin")
            (where.host / "touch.bin").write_bytes(payload.patched(blob, offset, params))
            write_json(where.host / "probe-job.json", contract.encode(make_probe_job(scenario, where.guest)))
            if scenario.l2_hypervisor is not None:  # a nested scenario: touch.bin is L3, under gh.bin
                for file, data in nested_files(scenario, *tools.payload("gh.bin")).items():
                    (where.host / file).write_bytes(data)
        elif scenario.guest.kind == "linux":
            l2 = l2_files(self.builder, self.state, self.lab.paths.share, scenario, where)
            qemu = contract.QemuJob(**scenario.qemu, kernel=l2["kernel"], initrd=l2["initrd"], append=l2["append"],
                                    smp=scenario.guest.vcpus, actions=scenario.actions)
        else:
            blob, offset = tools.payload("touch.elf")
            (where.host / "touch.elf").write_bytes(payload.patched(blob, offset, params))
            qemu = contract.QemuJob(**scenario.qemu, kernel=f"{where.guest}/touch.elf", smp=scenario.guest.vcpus,
                                    actions=scenario.actions)
        write_json(where.host / "job.json", contract.encode(scenario_job(scenario, l1_overrides, qemu)))
        # L1 stretches the timeout of a VMM still making progress (contract.TIMEOUT_STRETCH)
        l1 = staging.run_in_l1(self.lab, tools, where, self.results / name,
                               timeout=scenario.timeout * scenario.repeat * TIMEOUT_STRETCH + 120)
        artefacts = l1.artefacts
        run: dict[str, Any] = {"artefacts": artefacts, "log": l1.log, "mark": l1.mark, "status": l1.status,
                               "output": l1.output, "l1_seconds": l1.seconds, "result": None, "probe": None,
                               "trace": None, "refused": l1.refused, "runner_died": l1.runner_died}
        run["result"], run["probe"], problem = staging.l1_reports(artefacts)
        if problem:
            run["json_error"] = problem
        if run["result"] and "trace" in run["result"]:
            try:
                run["trace"] = tracefile.load(artefacts, run["result"]["trace"])
            except (ValueError, OSError) as exc:
                run["trace_error"] = f"the trace could not be decoded: {exc}"
        return run

    def _gone(self, wait: float) -> bool:
        """True once the lab's QEMU is gone; a channel that dropped gives it `wait` s to exit."""
        deadline = time.monotonic() + wait
        while self.lab.is_up():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _no_result(self, run: dict[str, Any]) -> list[str] | None:
        if run.get("runner_died"):
            crashes = crash.scan(run["log"])
            return [staging.runner_died_reason(run["output"])] + (
                [f"L1 log: {crashes[0].title}", crashes[0].excerpt] if crashes else [])
        if run.get("json_error") and self.lab.is_up():
            return [run["json_error"]]
        if run["result"] is None:
            crashes = crash.scan(run["log"])
            how = "is gone"
            # A channel that dropped: QEMU is on its way out. A panic seen while QEMU runs: it may stay.
            wait = 0.0 if run["status"] != -1 else 1.0 if "L1 panicked" in run["output"] else 3.0
            if not self._gone(wait) and any(c.pattern == "panic" for c in crashes):
                # L1 panicked but QEMU stays (a `panic=0` on the kernel command line): it
                # runs nothing more, so it is stopped and the suite ends like a dead lab's.
                self.lab.down(timeout=1)
                how = "was stopped by kvmlab: L1 had panicked"
            if not self.lab.is_up():
                # QEMU wrote the console's last lines as it went: read them again.
                run["log"] = read_from(self.lab.paths.console_log, run["mark"])
                (run["artefacts"] / "l1.log").write_text(run["log"])
                crashes = crash.scan(run["log"])
            else:
                reasons = [f"L1's scenario runner left no result (exit status {run['status']}): "
                           f"{run['output'].strip()[-500:]}"]
                if crashes:
                    reasons += [f"L1 log: {crashes[0].title}", crashes[0].excerpt]
                return reasons
            # The lab died: say so first, then why (a panic in L1's log, QEMU's last words)
            # and the console's last lines.
            pid = self.state.get("pid", "?")
            reasons = [f"the lab died: L0 QEMU (pid {pid}) {how}"
                       + (f"; L1 log: {crashes[0].title}" if crashes else "")]
            said = tail(self.lab.paths.qemu_log, 10)
            if said:
                reasons.append("QEMU said:\n" + said)
            if crashes:
                reasons.append("L1's crash report:\n" + crashes[0].excerpt)
            else:
                reasons.append(f"last lines of the L1 console ({self.lab.paths.console_log}):\n"
                               + (tail(self.lab.paths.console_log, CONSOLE_TAIL) or "(empty)"))
            return reasons
        if run.get("trace_error"):
            return [run["trace_error"]]
        return None

    def run_one(self, scenario: Scenario, tools: Tools) -> ScenarioResult:
        """The scenario run once, or `count` times in a row (NAME/run-1, ...) judged as one:
        lab/scenarios/result.py says how."""
        if self.count == 1:
            return self._run_once(scenario, tools)
        runs = []
        for i in range(1, self.count + 1):
            runs.append(self._run_once(dataclasses.replace(scenario, name=f"{scenario.name}/run-{i}"), tools))
            if runs[-1].status == ERROR and not self.lab.is_up():
                break
        out = counted(runs, str(self.results / scenario.name))
        first = Path(runs[0].artefacts) / "verdict.json"  # its regions draw the report's pictures
        data = {**(json.loads(first.read_text()) if first.exists() else {}), **out.as_dict(),
                "runs": [r.as_dict() for r in runs]}
        write_json(self.results / scenario.name / "verdict.json", data)
        return out

    def _run_once(self, scenario: Scenario, tools: Tools) -> ScenarioResult:
        started = time.monotonic()
        out = ScenarioResult(scenario.name, scenario.description, scenario.expected, ERROR,
                             source=_source_name(scenario.path))
        if scenario.compare_thp:
            return self._compare(scenario, tools, out, started)
        not_run = None  # not run at all: it would say nothing about this kernel, or this lab
        if scenario.kernels and self.release and not versions_match(scenario.kernels, self.release):
            not_run = NA, f"applies to kernels {scenario.kernels}; L1 runs {self.release}"
        elif scenario.l2_hypervisor is not None and self.summary["kvm_mode"] not in KVM_MODE_REPORTS["nested"]:
            not_run = SKIP, ("a nested scenario needs a lab whose KVM runs guest hypervisors (kvmlab up --nested "
                             f"--kernel sid); this one's is {self.summary['kvm_mode']}")
        if not_run:
            out.status, out.reasons = not_run[0], [not_run[1]]
            (self.results / scenario.name).mkdir(parents=True, exist_ok=True)
            return self._finish(out, self.results / scenario.name, started)
        run = self.execute(scenario, tools, scenario.name)
        artefacts = run["artefacts"]
        problem = self._no_result(run)
        if problem:
            out.reasons = problem
            return self._finish(out, artefacts, started)
        result, probe, trace = run["result"], run["probe"], run["trace"]
        analysed = time.monotonic()
        verdict: Verdict = evaluate(scenario, result.get("l1_release", self.release), result, trace, probe,
                                    crash.scan(run["log"]), self.l0)
        out.status, out.observed, out.reasons = verdict.status, verdict.observed, verdict.reasons
        out.faults, out.counts, out.checks = verdict.faults, verdict.counts(), verdict.checks
        if verdict.status == ERROR and crashed(result):
            out.reasons.append(self._run_again(scenario, tools))
        out.timings = {"l1": round(run["l1_seconds"], 2), "analysis": round(time.monotonic() - analysed, 2),
                       "vmm": (result.get("vmm") or {}).get("seconds", 0),
                       "guest": (probe or {}).get("guest_seconds", 0),
                       "trace_dump": (result.get("trace") or {}).get("dump_seconds", 0)}
        if result.get("repeat"):
            out.timings["runs_per_second"] = result["repeat"].get("per_second", 0)
        maps = None
        if trace is not None:
            out.timings["events"] = len(trace.events)
            phases = sorted({r.phase for r in scenario.regions if r.phase is not None})
            if phases:
                faults = judged_faults(trace, result.get("l1_release", self.release))
                g = granule_of(result.get("l1_page_size"))
                maps = [{"label": f"phase {p}", "regions": region_records(phase_regions(scenario, faults, p, g))}
                        for p in phases]
        if scenario.l2_hypervisor is not None and verdict.regions:  # the fault map per level
            maps = level_maps(scenario.l2_hypervisor, scenario.memslots,
                              maps or [{"label": "", "regions": region_records(verdict.regions)}])
        return self._finish(out, artefacts, started, verdict, maps)

    def _run_again(self, scenario: Scenario, tools: Tools) -> str:
        """A VMM that crashed is a finding: the scenario runs once more, explicitly (its
        artefacts in NAME/rerun), and the verdict stays ERROR whatever the second run says."""
        run = self.execute(scenario, tools, f"{scenario.name}/rerun")
        problem = self._no_result(run)
        if problem:
            return f"run once more (NAME/rerun; the verdict stays ERROR): no result either: {problem[0]}"
        again = evaluate(scenario, run["result"].get("l1_release", self.release), run["result"], run["trace"],
                         run["probe"], crash.scan(run["log"]), self.l0)
        first = again.reasons[0] if again.reasons else ""
        return (f"run once more ({scenario.name}/rerun; the verdict stays ERROR): {again.status.upper()}"
                + (f", {again.observed}" if again.observed else "") + (f"; {first}" if again.status != PASS else ""))

    def _compare(self, scenario: Scenario, tools: Tools, out: ScenarioResult, started: float) -> ScenarioResult:
        """The same workload under two L1 THP modes; the verdict is on the fault ratio."""
        artefacts = self.results / scenario.name
        verdicts = []
        for mode in scenario.compare_thp:
            run = self.execute(scenario, tools, f"{scenario.name}/thp-{mode}", {"thp": mode})
            problem = self._no_result(run)
            if problem:
                out.reasons = [f"THP {mode}: {p}" for p in problem]
                return self._finish(out, artefacts, started)
            v = evaluate(scenario, run["result"].get("l1_release", self.release), run["result"], run["trace"],
                         run["probe"], crash.scan(run["log"]), self.l0)
            if v.status != PASS:
                out.status, out.reasons = v.status, [f"THP {mode}: {r}" for r in v.reasons]
                return self._finish(out, artefacts, started)
            verdicts.append((mode, v))
        (first, a), (second, b) = verdicts
        ratio = b.faults / max(1, a.faults)
        ok = ratio >= (scenario.fault_ratio or 1)
        out.status = PASS if ok else FAIL
        out.faults = a.faults + b.faults
        out.counts = {f"{k} ({first})": n for k, n in a.counts().items()}
        out.observed = f"{second}/{first} = {ratio:.1f}x ({b.faults}/{a.faults} faults)"
        out.reasons = [f"L2 Linux boot and workload: {a.faults} faults with THP {first} ({describe(a.regions)}), "
                       f"{b.faults} with THP {second} ({describe(b.regions)}): {ratio:.1f}x"
                       + ("" if ok else f", expected at least {scenario.fault_ratio:g}x")]
        out.checks = [{"check": "fault_ratio", "ok": ok, "text": out.observed}]
        maps = [{"label": f"THP {mode}", "regions": region_records(v.regions)} for mode, v in verdicts]
        return self._finish(out, artefacts, started, maps=maps)

    def _finish(self, out: ScenarioResult, artefacts: Path, started: float,
                verdict: Verdict | None = None, maps: list[dict[str, Any]] | None = None) -> ScenarioResult:
        out.seconds = round(time.monotonic() - started, 2)
        out.artefacts = str(artefacts)
        for listed in sorted(artefacts.rglob(REFUSED)):
            lines = listed.read_text().splitlines()
            where = listed.parent.relative_to(artefacts.parent)
            out.reasons.append(f"L1 left {len(lines)} file(s) in the share that the host did not take "
                               f"({where}/{REFUSED}): {lines[0]}" + (", ..." if len(lines) > 1 else ""))
        data = out.as_dict()
        if verdict is not None:
            data["regions"] = region_records(verdict.regions)
        if maps:
            data["maps"] = maps
        write_json(artefacts / "verdict.json", data)
        return out


def crashed(result: dict[str, Any]) -> bool:
    """The VMM died of a signal it did not get from the runner (kill_after, the timeout)."""
    vmm = result.get("vmm") or {}
    return "signal" in vmm and "killed" not in vmm and "timeout" not in vmm and not result.get("repeat")


def _source_name(path: Path | None) -> str:
    if path is None:
        return ""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
