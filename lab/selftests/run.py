"""`kvmlab selftests`: the KVM selftests built for L1's kernel, run one at a time in L1,
judged by their exit status and TAP (lab/analysis/ktap.py), by the stage-2 mapping of
their memory when traced, and against the kernel's known results (selection.py).

Each run (a test, with one backing when it takes `-s`) is one `l1.scenario` job of the
`command` kind, as `kvmlab trace` runs: L1's settings (huge pages reserved for a hugetlb
backing, page cache dropped, memory compacted), then the test under its timeout, with
`kvm:kvm_guest_fault` recorded when asked and the same loss checks as a scenario. The
binaries reach L1 through the share once per build, into L1's RAM.

    RESULTS/summary.json     as a suite's: every run's verdict (`kvmlab report` reads it)
    RESULTS/NAME/            command.log (the test's output), result.json, the raw trace,
                             verdict.json (the regions of the test's memory, for the maps)
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lab.analysis import ktap, mapping
from lab.analysis import trace as tracefile
from lab.analysis.verdict import region_records
from lab.builder.store import Entry
from lab.core.errors import LabError, UserError
from lab.core.status import ERROR, FAIL, PASS, SKIP, XFAIL
from lab.machine.lab import Lab
from lab.scenarios import staging
from lab.scenarios.result import ScenarioResult
from lab.scenarios.runner import Runner
from lab.selftests.judge import L1Facts, against_known, memory_windows
from lab.selftests.selection import HUGE_KB, KnownResults, Selection, Test
from lab.shared import contract
from lab.shared.files import write_json


@dataclass(frozen=True)
class Planned:
    test: Test
    backing: str | None

    @property
    def name(self) -> str:
        return f"{self.test.name}[{self.backing}]" if self.backing else self.test.name


def plan(selection: Selection, tests: list[str], keyword: str | None, backings: list[str] | None,
         run_all: bool) -> list[Planned]:
    """The runs: each chosen test, once per backing asked for if it takes one."""
    chosen = list(selection.tests.values())
    if tests:
        unknown = [t for t in tests if t not in selection.tests]
        if unknown:
            raise UserError(f"{unknown[0]}: not a test of {selection.path} ({len(selection.tests)} listed: "
                            f"{', '.join(list(selection.tests)[:6])}, ...); `kvmlab selftests --list` shows them")
        chosen = [selection.tests[t] for t in tests]
    elif not run_all:
        chosen = [t for t in chosen if t.default]
    if keyword:
        chosen = [t for t in chosen if keyword in t.name or _glob(keyword, t.name)]
    runs = []
    for test in chosen:
        for backing in (backings or selection.backings) if test.backing else [None]:
            runs.append(Planned(test, backing))
    return runs


def _glob(pattern: str, name: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern)


def l1_facts(lab: Lab, config_file: Path | None) -> L1Facts:
    status, out = lab.run("grep -m1 '^Features' /proc/cpuinfo; grep '^MemTotal' /proc/meminfo; "
                          "[ -r /proc/config.gz ] && zcat /proc/config.gz | grep '^CONFIG_' || true", timeout=60)
    if status != 0:
        raise LabError(f"reading L1's CPU features and memory failed: {out.strip()[-200:]}")
    features: set[str] = set()
    mem = 0
    config: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("Features"):
            features = set(line.split(":", 1)[1].split())
        elif line.startswith("MemTotal"):
            mem = int(line.split()[1]) // 1024
        elif line.startswith("CONFIG_") and "=" in line:
            k, _, val = line.partition("=")
            config[k] = val
    source = "L1's /proc/config.gz"
    if config_file is not None and config_file.is_file():
        from lab.kernels.source import read_config

        config, source = read_config(config_file), str(config_file)
    elif not config:
        source = ""
    return L1Facts(features, mem, config, source)


def run_on_lab(lab: Lab, runs: list[Planned], results: Path, trace: bool = False, src: Path | None = None,
               known_file: Path | None = None, config_file: str | None = None, progress: Any = None,
               on_result: Callable[[ScenarioResult], None] | None = None,
               echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The selftests built for the kernel `lab` runs (from `src`, or Debian's source of
    it), run on it into `results`, judged against that kernel's known results. Returns
    the summary (also RESULTS/summary.json)."""
    from lab.builder.build import Builder
    from lab.config import load_config
    from lab.selftests.selection import load_known

    state = lab.require_up()
    # the kernel the lab runs, which may not be this config's (a lab brought up earlier)
    cfg = load_config(config_file, {"lab.name": lab.name, "lab.kernel": state["config"]["lab"]["kernel"]})
    label = state.get("kernel", {}).get("label") or cfg.kernel_spec.label
    build = Builder(progress=progress).selftests(cfg, src, jobs=max(1, os.cpu_count() or 1))
    known = load_known(label, known_file)
    facts = l1_facts(lab, Path(state.get("kernel", {}).get("image", "/nonexistent")).parent / "config")
    if echo is not None:
        echo(f"Running {len(runs)} selftest run{'s' if len(runs) != 1 else ''} ({len({r.test.name for r in runs})} "
             f"tests) on lab '{lab.name}' ({state.get('ready', {}).get('release', '?')}){', traced' if trace else ''}; "
             f"built {len(build.manifest['tests'])} tests from {build.manifest['inputs']['tree']}; known results: "
             f"{known.path or f'none for {label} (every test is expected to pass)'}; results in {results}")
    runner = Runner(lab, results, targets=["selftests"])
    return SelftestRunner(lab, build, results, known, facts, trace, runner, on_result).run(runs)


class SelftestRunner:
    def __init__(self, lab: Lab, build: Entry, results: Path, known: KnownResults, facts: L1Facts, trace: bool,
                 runner: Runner, on_result: Callable[[ScenarioResult], None] | None = None):
        self.lab, self.build, self.results, self.known, self.facts = lab, build, results, known, facts
        self.trace, self.runner, self.on_result = trace, runner, on_result
        self.tools = runner.sync_tools()
        self.bin = self.sync_binaries()

    def sync_binaries(self) -> str:
        """The build's bin/ into the share once per build key, then into L1's RAM once:
        the path of the tests in L1."""
        key = self.build.manifest["key"][:16]
        target = self.lab.paths.share / ".kvmlab" / "selftests"
        if not (target / f".key-{key}").exists():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(self.build.path / "bin", target)
            (target / f".key-{key}").touch()
        here = f"/run/kvmlab/selftests-{key}"
        status, out = self.lab.run(f"[ -e {here}/.copied ] || {{ rm -rf /run/kvmlab/selftests-* && "
                                   f"cp -a {staging.GUEST_KVMLAB}/selftests {here}.tmp && : > {here}.tmp/.copied "
                                   f"&& mv {here}.tmp {here}; }}", timeout=600)
        if status != 0:
            raise LabError(f"copying the selftests into L1 failed: {out.strip()[-200:]}")
        return here

    def path_of(self, test: Test) -> str:
        names = [n for n in self.build.manifest["tests"] if n.rsplit("/", 1)[-1] == test.name]
        return names[0] if names else ""

    def run(self, runs: list[Planned]) -> dict[str, Any]:
        self.results.mkdir(parents=True, exist_ok=True)
        summary = self.runner.summary
        summary.update({"kind": "selftests", "selftests_build": self.build.path.name,
                        "selftests_source": self.build.manifest["inputs"]["tree"],
                        "known_results": str(self.known.path or ""), "traced": self.trace})
        started = time.monotonic()
        try:
            for planned in runs:
                result = self.run_one(planned)
                summary["scenarios"].append(result.as_dict())
                self.runner.save_summary(time.monotonic() - started)
                if self.on_result:
                    self.on_result(result)
                if result.status == ERROR and not self.lab.is_up():
                    break
        finally:
            self.runner.save_summary(time.monotonic() - started)
            try:
                shutil.copyfile(self.lab.paths.console_log, self.results / "l1-console.log")
            except OSError:
                pass
        return summary

    def run_one(self, planned: Planned) -> ScenarioResult:
        test, backing = planned.test, planned.backing
        started = time.monotonic()
        known = self.known.of(test.name, backing)
        expected_map = test.expect.get(backing or "") if self.trace else None
        expected = known.status + (f"; test memory: {expected_map}" if expected_map else "")
        out = ScenarioResult(planned.name, test.why or f"the KVM selftest {test.name}", expected, ERROR,
                             source=test.name)
        artefacts = self.results / _dirname(planned.name)
        rel = self.path_of(test)
        if not rel:
            artefacts.mkdir(parents=True, exist_ok=True)
            error = (self.build.manifest.get("build_errors") or {}).get(test.name)
            if error is None:
                out.status, out.reasons = SKIP, [f"{test.name} is not among this tree's arm64 KVM selftests"]
                return self._finish(out, artefacts, started, {})
            # It is in the tree but did not compile: a failure, judged like one (its known
            # result may name the error as its cause)
            reasons = [f"FAIL: did not build: {error}"]
            out.status = against_known(FAIL, known, self.known, self.facts, error, reasons)
            out.reasons, out.observed = reasons, "did not build"
            return self._finish(out, artefacts, started, {})
        job = self._job(planned, rel)
        where = staging.run_dir(self.lab, _dirname(planned.name))
        write_json(where.host / "job.json", contract.encode(job))
        l1 = staging.run_in_l1(self.lab, self.tools, where, artefacts, timeout=test.timeout + 120)
        if l1.error is not None:
            out.reasons = [f"running it in L1 failed: {l1.error}"]
            return self._finish(out, artefacts, started, {})
        if l1.runner_died:
            out.reasons = [staging.runner_died_reason(l1.output)]
            return self._finish(out, artefacts, started, {})
        left = artefacts / "result.json"
        no_result = f"L1 left no result: {l1.output.strip()[-300:]}"
        result, bad = staging.l1_json(left) if left.is_file() else (None, no_result)
        if result is None:
            out.reasons = [str(bad)]
            return self._finish(out, artefacts, started, {})
        if result.get("error"):
            out.reasons = [f"L1's runner failed: {result['error']}"]
            return self._finish(out, artefacts, started, {})
        if result.get("skip") or result.get("na"):  # a huge page size L1 lacks, or could not reserve
            out.status, out.reasons = SKIP, [result.get("na") or result["skip"]]
            return self._finish(out, artefacts, started, {})
        output = (artefacts / "command.log").read_text(errors="replace") if (artefacts / "command.log").exists() else ""
        vmm = result.get("vmm") or {}
        outcome = ktap.judge(output, vmm.get("exit_code"), vmm.get("signal"),
                             test.timeout if vmm.get("timeout") else None)
        reasons = [f"{outcome.status.upper()}: {outcome.reason}"]
        # an `output` cause may name the judge's own words too ("ran past its timeout")
        status = against_known(outcome.status, known, self.known, self.facts, output + "\n" + outcome.reason, reasons)
        extra: dict[str, Any] = {}
        # the mapping of a test's memory is judged when the test ran through (one that
        # failed or skipped may never have touched it)
        if self.trace and "trace" in result and outcome.status == PASS:
            trace_status, extra = self._judge_trace(planned, result, artefacts, output, reasons, out)
            if trace_status == FAIL and status in (PASS, XFAIL):
                status = FAIL
        crashes = _crashes(l1.log)
        if crashes:
            reasons.append("L1 log: " + crashes[0])
            status = FAIL
        out.status, out.reasons = status, reasons
        out.observed = outcome.status.value + (f"; {extra['observed']}" if extra.get("observed") else "")
        out.timings = {"test": vmm.get("seconds", 0), "l1": round(l1.seconds, 2)}
        return self._finish(out, artefacts, started, extra)

    def _job(self, planned: Planned, rel: str) -> contract.ScenarioJob:
        test, backing = planned.test, planned.backing
        hugepages = {}
        if backing in HUGE_KB and test.hugepages:
            hugepages[str(HUGE_KB[backing])] = test.hugepages
        command = "exec " + shlex.join([f"{self.bin}/{rel}", *test.argv(backing)])
        events = ["kvm:kvm_guest_fault"] if self.trace else []
        return contract.ScenarioJob(vmm="command", name=_dirname(planned.name), command=command, timeout=test.timeout,
                                    l1=contract.L1Settings(hugepages=hugepages),
                                    trace=contract.Trace(events=events, optional=[], buffer_kb=test.trace_kb))

    def _judge_trace(self, planned: Planned, result: dict[str, Any], artefacts: Path, output: str,
                     reasons: list[str], out: ScenarioResult) -> tuple[str, dict[str, Any]]:
        trace = tracefile.load(artefacts, result["trace"])
        out.faults = len(trace.faults)
        status = PASS
        if not trace.complete:
            reasons.append("trace incomplete: " + "; ".join(trace.problems))
            status = FAIL
        windows = memory_windows(planned.test, output)
        expected = planned.test.expect.get(planned.backing or "")
        if not windows:
            if expected:
                reasons.append(f"the test printed no guest memory range ({planned.test.memory}), so its mapping "
                               f"cannot be judged against {expected}")
                return FAIL, {}
            return status, {}  # its fault count is in `faults`; the observed cell compares across kernels
        regions: dict[int, mapping.Region] = {}
        for lo, hi in windows:
            # only the 2 MiB regions wholly inside the range: at an edge that is not
            # 2 MiB-aligned the guest touches a few of its pages, which proves nothing
            inside = mapping.infer(trace.faults, mapping.Touched(lo, hi - lo), (lo, hi))
            regions.update({s: r for s, r in inside.items() if s >= lo and s + mapping.REGION <= hi})
        faulted = {s: r for s, r in regions.items() if r.faults}
        out.counts = dict(mapping.summary(faulted))
        spans = ", ".join(f"[{lo:#x}, {hi:#x})" for lo, hi in windows[:3]) + (" ..." if len(windows) > 3 else "")
        reasons.append(f"test memory {spans}: {mapping.describe(faulted)}")
        if expected:
            # "block?": one fault on the only page of the test's memory in that region (its
            # first or last region, when the memory is not 2 MiB-aligned): it says nothing
            accepted = {expected, mapping.UNKNOWN}
            wrong = {s: r for s, r in faulted.items() if r.mapping not in accepted}
            if not faulted:
                reasons.append(f"no stage-2 fault in the test's memory; expected {expected}")
                status = FAIL
            elif wrong:
                first = next(iter(wrong.values()))
                reasons.append(f"expected {expected} for {planned.backing}: {len(wrong)} of {len(faulted)} regions "
                               f"differ, the first at {first.start:#x}: {first.mapping} ({first.evidence()})")
                status = FAIL
        return status, {"observed": mapping.describe(faulted), "regions": region_records(regions)}

    def _finish(self, out: ScenarioResult, artefacts: Path, started: float, extra: dict[str, Any]) -> ScenarioResult:
        out.seconds = round(time.monotonic() - started, 2)
        out.artefacts = str(artefacts)
        data = out.as_dict()
        if extra.get("regions"):
            data["regions"] = extra["regions"]
        write_json(artefacts / "verdict.json", data)
        return out


def _dirname(name: str) -> str:
    return name.replace("[", "-").replace("]", "").replace("/", "-")


def _crashes(log: str) -> list[str]:
    from lab.analysis import crash

    return [c.title for c in crash.scan(log)]
