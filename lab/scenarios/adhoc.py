"""`kvmlab trace`: the suite's capture and analysis around any command run in L1 (a
reproducer VMM from a bug report, a KVM selftest binary copied in with `kvmlab cp`)."""

from __future__ import annotations

import secrets
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.analysis import crash, mapping
from lab.analysis import trace as tracefile
from lab.analysis.esr import Esr
from lab.builder.build import Builder
from lab.core.errors import LabError, UserError
from lab.machine.lab import Lab
from lab.scenarios import staging
from lab.scenarios.runner import Runner
from lab.shared import contract
from lab.shared.files import write_json
from lab.shared.units import human_size


@dataclass
class TraceRun:
    artefacts: Path
    result: dict[str, Any]
    trace: tracefile.Trace
    output: str
    crashes: list[crash.Crash]
    #: what L1 left in the share that the host did not take ("path: reason")
    refused: list[str] = field(default_factory=list)


def run(lab: Lab, command: list[str], events: list[str], buffer_kb: int, timeout: float, results: Path,
        builder: Builder | None = None) -> TraceRun:
    for event in events:
        if ":" not in event:
            raise UserError(f"--event {event}: write SYSTEM:EVENT, e.g. kvm:kvm_guest_fault")
    runner = Runner(lab, results, builder)
    tools = runner.sync_tools()
    where = staging.run_dir(lab, f"trace-{secrets.token_hex(4)}")
    script = command[0] if len(command) == 1 else shlex.join(command)
    job = contract.ScenarioJob(name=where.name, vmm="command", command=script, timeout=float(timeout),
                               trace=contract.Trace(events=list(events), buffer_kb=buffer_kb, optional=[]))
    write_json(where.host / "job.json", contract.encode(job))
    l1 = staging.run_in_l1(lab, tools, where, results / "trace", timeout=timeout + 120)
    if l1.error is not None:
        raise l1.error
    if l1.runner_died:
        raise LabError(staging.runner_died_reason(l1.output))
    artefacts, log, output = l1.artefacts, l1.log, l1.output
    result_file = artefacts / "result.json"
    if not result_file.exists():
        raise LabError(f"L1 left no result for the traced command: {output.strip()[-300:]}")
    result, problem = staging.l1_json(result_file)
    if result is None:
        raise LabError(f"tracing in L1 failed: {problem}")
    if result.get("error"):
        raise LabError(f"tracing in L1 failed: {result['error']}")
    trace = tracefile.load(artefacts, result["trace"])
    with open(artefacts / "events.txt", "w") as f:
        for e in trace.events:
            fields = " ".join(f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v!r}" for k, v in e.fields.items())
            f.write(f"{e.ts / 1e9:.6f} cpu{e.cpu} pid {e.pid} {e.name}: {fields}\n")
    return TraceRun(artefacts, result, trace, (artefacts / "command.log").read_text(errors="replace")
                    if (artefacts / "command.log").exists() else "", crash.scan(log), l1.refused)


def analysis_lines(trace: tracefile.Trace, page_size: int | None = None) -> list[str]:
    """Fault kinds, and the mapping of every region that faulted (2 MiB; with L1's 16 KiB
    pages, `page_size`, 32 MiB), grouped in runs."""
    if not trace.faults:
        return ["no kvm_guest_fault events"]
    kinds = Counter(Esr(f.esr).describe() for f in trace.faults)
    lines = [f"{len(trace.faults)} stage-2 faults:"]
    lines += [f"  {n:>8}  {kind}" for kind, n in kinds.most_common()]
    granule = mapping.granule_of(page_size)
    size = granule.block
    regions = mapping.infer(trace.faults, granule=granule)
    lines.append(f"{len(regions)} {human_size(size)} regions faulted: {mapping.describe(regions)}")
    rows: list[tuple[int, int, str]] = []  # runs of neighbouring regions mapped alike
    for start, r in regions.items():
        if rows and rows[-1][2] == r.mapping and start == rows[-1][1] + size:
            rows[-1] = (rows[-1][0], start, r.mapping)
        else:
            rows.append((start, start, r.mapping))
    for lo, hi, label in rows[:40]:
        n = (hi - lo) // size + 1
        lines.append(f"  {lo:#014x}-{hi + size:#014x}  {n:>5} x {label}")
    if len(rows) > 40:
        lines.append(f"  ... {len(rows) - 40} more runs in events.txt")
    return lines


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
