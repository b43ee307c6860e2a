"""`kvmlab trace`: the suite's capture and analysis around any command run in L1 (a
reproducer VMM from a bug report, a KVM selftest binary copied in with `kvmlab cp`)."""

from __future__ import annotations

import json
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
from lab.machine import share
from lab.machine.lab import Lab
from lab.machine.logs import read_from, size_of
from lab.scenarios.runner import GUEST_KVMLAB, REFUSED, Runner, l1_command
from lab.shared import contract
from lab.shared.files import write_json


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
    name = f"trace-{secrets.token_hex(4)}"
    run_host = lab.paths.share / ".kvmlab" / "runs" / name
    run_guest = f"{GUEST_KVMLAB}/runs/{name}"
    run_host.mkdir(parents=True)
    script = command[0] if len(command) == 1 else shlex.join(command)
    job = contract.ScenarioJob(name=name, vmm="command", command=script, timeout=float(timeout),
                               trace=contract.Trace(events=list(events), buffer_kb=buffer_kb))
    write_json(run_host / "job.json", contract.encode(job))
    console = lab.paths.console_log
    mark = size_of(console)
    try:
        _, output = lab.run(l1_command(tools, f"{run_guest}/job.json"), timeout=timeout + 120)
    finally:
        results.mkdir(parents=True, exist_ok=True)
        # What L1 left, taken as untrusted (lab/machine/share.py)
        taken = share.import_tree(lab.paths.share, f".kvmlab/runs/{name}", results / "trace")
    artefacts = results / "trace"
    if taken.refused:
        (artefacts / REFUSED).write_text("\n".join(taken.refused) + "\n")
    log = read_from(console, mark)
    (artefacts / "l1.log").write_text(log)
    result_file = artefacts / "result.json"
    if not result_file.exists():
        raise LabError(f"L1 left no result for the traced command: {output.strip()[-300:]}")
    result = json.loads(result_file.read_text())
    if result.get("error"):
        raise LabError(f"tracing in L1 failed: {result['error']}")
    trace = tracefile.load(artefacts, result["trace"])
    with open(artefacts / "events.txt", "w") as f:
        for e in trace.events:
            fields = " ".join(f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v!r}" for k, v in e.fields.items())
            f.write(f"{e.ts / 1e9:.6f} cpu{e.cpu} pid {e.pid} {e.name}: {fields}\n")
    return TraceRun(artefacts, result, trace, (artefacts / "command.log").read_text(errors="replace")
                    if (artefacts / "command.log").exists() else "", crash.scan(log), taken.refused)


def analysis_lines(trace: tracefile.Trace) -> list[str]:
    """Fault kinds, and the mapping of every 2 MiB region that faulted, grouped in runs."""
    if not trace.faults:
        return ["no kvm_guest_fault events"]
    kinds = Counter(Esr(f.esr).describe() for f in trace.faults)
    lines = [f"{len(trace.faults)} stage-2 faults:"]
    lines += [f"  {n:>8}  {kind}" for kind, n in kinds.most_common()]
    regions = mapping.infer(trace.faults)
    lines.append(f"{len(regions)} 2 MiB regions faulted: {mapping.describe(regions)}")
    rows: list[tuple[int, int, str]] = []  # runs of neighbouring regions mapped alike
    for start, r in regions.items():
        if rows and rows[-1][2] == r.mapping and start == rows[-1][1] + mapping.REGION:
            rows[-1] = (rows[-1][0], start, r.mapping)
        else:
            rows.append((start, start, r.mapping))
    for lo, hi, label in rows[:40]:
        n = (hi - lo) // mapping.REGION + 1
        lines.append(f"  {lo:#014x}-{hi + mapping.REGION:#014x}  {n:>5} x {label}")
    if len(rows) > 40:
        lines.append(f"  ... {len(rows) - 40} more runs in events.txt")
    return lines


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
