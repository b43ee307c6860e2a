"""One command of the runner in L1, from the share and back: a fresh run directory in the
lab's share for the job files, `python3 -m l1.scenario` on them in L1 (from a copy of the
tools in L1's RAM), then what L1 left taken into the results as untrusted
(lab/machine/share.py), with L1's console lines of the run beside it. Used by the suite's
runner (lab/scenarios/runner.py) and by `kvmlab trace` (lab/scenarios/adhoc.py)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.builder.build import Tools
from lab.core.errors import LabError
from lab.machine import share
from lab.machine.agent import GUEST_SHARE
from lab.machine.lab import Lab
from lab.machine.logs import read_from, size_of

GUEST_KVMLAB = f"{GUEST_SHARE}/.kvmlab"
#: In a run's artefacts: what L1 left in the share that the host did not take, and why.
REFUSED = "refused-from-l1.txt"

#: glibc malloc for l1.scenario and the probe VMM forked from it: one arena, never trimmed.
#: A thread's own arena is mapped and trimmed (munmap) on its first malloc, and a trim
#: unmaps heap; before 5.13, any change to the VMM's mm makes every stage-2 fault in flight
#: retry (kvm_mmu_notifier_invalidate_range_start counts ranges outside memslots too), so
#: on 5.10 vCPU threads starting to fault made extra faults: measured with
#: kvm_unmap_hva_range, 3-4 unmaps of 64 MiB arenas while vcpus-scattered faulted, 0-1 with
#: these (a copy-on-write of one page of python's .data). QEMU as the VMM and the command
#: of `kvmlab trace` run with glibc's defaults.
VMM_MALLOC = "GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=4294967295"


def l1_command(tools: Tools, job: str) -> str:
    """L1's shell command that runs l1.scenario on `job` from a copy of the tools in L1's
    RAM, made once per tools version: importing from the 9p share cost 0.45 s more per
    scenario under TCG (measured in L1), the copy 0.5 s once."""
    if not tools.key.isalnum():
        raise LabError(f"tools key {tools.key!r} is not a plain word: remove the tools cache entry and rerun")
    here = f"/run/kvmlab/tools-{tools.key}"
    return (f"[ -e {here}/.copied ] || {{ rm -rf /run/kvmlab/tools-* && cp -a {GUEST_KVMLAB}/tools {here}.tmp "
            f"&& : > {here}.tmp/.copied && mv {here}.tmp {here}; }} && cd {here} "
            f"&& exec env {VMM_MALLOC} python3 -m l1.scenario {job}")


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


def run_in_l1(lab: Lab, tools: Tools, where: RunDir, artefacts: Path, timeout: float) -> L1Run:
    """Runs l1.scenario on WHERE's job.json in L1, then takes what it left into `artefacts`
    (replaced): the files L1 wrote, `refused-from-l1.txt` when it left some the host did
    not take, `l1.log` (its console lines) and `l1-runner.out` (the command's output)."""
    shutil.rmtree(artefacts, ignore_errors=True)
    artefacts.parent.mkdir(parents=True, exist_ok=True)
    console = lab.paths.console_log
    mark = size_of(console)
    started = time.monotonic()
    error = None
    try:
        status, output = lab.run(l1_command(tools, f"{where.guest}/job.json"), timeout=timeout)
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
