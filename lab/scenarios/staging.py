"""One job of L1's resident runner, from the share and back: a fresh run directory in the
lab's share for the job files, the job handed to the runner in L1 (lab/machine/l1runner.py:
it forks a process that runs l1.scenario on it), then what L1 left taken into the results as untrusted
(lab/machine/share.py), with L1's console lines of the run beside it. Used by the suite's
runner (lab/scenarios/runner.py) and by `kvmlab trace` (lab/scenarios/adhoc.py)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.builder.build import Tools
from lab.core.errors import LabError
from lab.machine import share
from lab.machine.l1runner import GUEST_KVMLAB, RUNNER_DIED, command, job_line
from lab.machine.lab import Lab
from lab.machine.logs import read_from, size_of

#: In a run's artefacts: what L1 left in the share that the host did not take, and why.
REFUSED = "refused-from-l1.txt"


@dataclass
class RunDir:
    """A run's directory in the share, as the host sees it and as L1 does."""
    name: str
    host: Path
    guest: str


def run_dir(lab: Lab, name: str) -> RunDir:
    """A fresh, empty run directory `name` in the lab's share."""
    host = lab.paths.share / ".kvmlab" / "runs" / name
    shutil.rmtree(host, ignore_errors=True)
    host.mkdir(parents=True)
    return RunDir(name, host, f"{GUEST_KVMLAB}/runs/{name}")


@dataclass
class L1Run:
    artefacts: Path
    #: L1's console lines of the run, from `mark` (a byte offset of the console log) on
    log: str
    mark: int
    #: the command's exit status, -1 when it could not be run or waited for (`error` says why)
    status: int
    output: str
    seconds: float
    #: what L1 left in the share that the host did not take ("path: reason")
    refused: list[str] = field(default_factory=list)
    error: LabError | None = None

    @property
    def runner_died(self) -> bool:
        """L1's runner died during the job (the job's output says so, last)."""
        return self.status == RUNNER_DIED and "scenario runner" in self.output


def runner_died_reason(output: str) -> str:
    """The reason a job is an error when L1's runner died during it: submit.sh's last line."""
    lines = output.strip().splitlines()
    said = lines[-1].removeprefix("kvmlab-l1: ") if lines else "L1's scenario runner died during this scenario"
    return f"{said} (an error, whatever the scenario left)"


def run_in_l1(lab: Lab, tools: Tools, where: RunDir, artefacts: Path, timeout: float) -> L1Run:
    """Has L1's runner run WHERE's job.json, then takes what it left into `artefacts`
    (replaced): the files L1 wrote, `refused-from-l1.txt` when it left some the host did
    not take, `l1.log` (its console lines) and `l1-runner.out` (the command's output)."""
    shutil.rmtree(artefacts, ignore_errors=True)
    artefacts.parent.mkdir(parents=True, exist_ok=True)
    console = lab.paths.console_log
    mark = size_of(console)
    started = time.monotonic()
    error = None
    try:
        job = f"{where.guest}/job.json"
        status, output = lab.run(command(tools, job), timeout=timeout, via=job_line(tools, job))
    except LabError as exc:
        status, output, error = -1, str(exc), exc
    seconds = time.monotonic() - started
    log = read_from(console, mark)
    taken = share.import_tree(lab.paths.share, f".kvmlab/runs/{where.name}", artefacts)
    if taken.refused:
        (artefacts / REFUSED).write_text("\n".join(taken.refused) + "\n")
    (artefacts / "l1.log").write_text(log)
    if output.strip():
        (artefacts / "l1-runner.out").write_text(output)
    return L1Run(artefacts, log, mark, status, output, seconds, taken.refused, error)


def l1_reports(artefacts: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """result.json (L1's runner's) and probe.json (the VMM's) as L1 left them, and the
    first problem with them. The VMM writes its report in place as it ends: when L1's
    runner killed it (the timeout, or a kill the scenario asks for) the kill can land in
    that write, so a probe.json cut short then is no report, not a problem (CI,
    2026-12-04: a VMM at the end of its stretched timeout ended and was killed at once)."""
    found: dict[str, dict[str, Any] | None] = {"result.json": None, "probe.json": None}
    problems: dict[str, str] = {}
    for name in found:
        if (artefacts / name).exists():
            found[name], problem = l1_json(artefacts / name)
            if problem:
                problems[name] = problem
    vmm = (found["result.json"] or {}).get("vmm")
    if "probe.json" in problems and isinstance(vmm, dict) and ("timeout" in vmm or "killed" in vmm):
        del problems["probe.json"]
    return found["result.json"], found["probe.json"], next(iter(problems.values()), None)


def l1_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON object L1 left (untrusted: it may be cut short or anything else), or why not."""
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"L1 left a {path.name} that is not JSON ({exc}): an error, whatever it says"
    if not isinstance(data, dict):
        return None, f"L1 left a {path.name} that is not a JSON object but a {type(data).__name__}"
    return data, None
