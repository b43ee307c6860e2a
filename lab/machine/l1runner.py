"""L1's resident scenario runner, from the host's side: the tools in the share, and the
command that has the runner run a job (images/l1/python/l1/submit.sh starts the runner
on first use; images/l1/python/l1/runner.py forks a process per scenario).

Used by every scenario, `kvmlab trace` command and traced selftest (lab/scenarios/
staging.py), and by `up --snapshot` before it saves L1, so that a restored lab has its
runner ready.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from lab.builder.build import Tools
from lab.core.errors import LabError
from lab.machine.agent import GUEST_SHARE, Agent
from lab.machine.qemu import LabPaths

GUEST_KVMLAB = f"{GUEST_SHARE}/.kvmlab"
#: submit.sh's exit status when the runner died during the scenario.
RUNNER_DIED = 125

#: glibc malloc for the runner, the scenarios forked from it and the probe VMM forked from
#: those: one arena, never trimmed. A thread's own arena is mapped and trimmed (munmap) on
#: its first malloc, and a trim unmaps heap; before 5.13, any change to the VMM's mm makes
#: every stage-2 fault in flight retry (kvm_mmu_notifier_invalidate_range_start counts
#: ranges outside memslots too), so on 5.10 vCPU threads starting to fault made extra
#: faults: measured with kvm_unmap_hva_range, 3-4 unmaps of 64 MiB arenas while
#: vcpus-scattered faulted, 0-1 with these (a copy-on-write of one page of python's .data).
#: QEMU as the VMM and the command of `kvmlab trace` run with glibc's defaults.
VMM_MALLOC = "GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.trim_threshold=4294967295"


def sync_tools(share: Path, tools: Tools) -> None:
    """The tools into the share, once per version (the key); L1 copies them into its RAM
    on first use (command())."""
    target = share / ".kvmlab" / "tools"
    if not (target / f".key-{tools.key}").exists():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(tools.path, target)
        (target / f".key-{tools.key}").touch()


def command(tools: Tools, job: str) -> str:
    """L1's shell command that has the runner of this tools version run `job` (a guest
    path; "-": only start the runner), from a copy of the tools in L1's RAM, made once per
    version (l1/install.sh, under the lock the runner's start takes too): importing from
    the 9p share cost 0.45 s more per scenario under TCG (measured in L1), the copy 0.5 s
    once."""
    here = _in_ram(tools)
    return (f"{{ [ -e {here}/.copied ] || sh {GUEST_KVMLAB}/tools/l1/install.sh {here}; }} && cd {here} "
            # sourced, not run: each program started under TCG costs 10-15 ms (env, sh)
            f"&& export {VMM_MALLOC} && set -- {here} {job} && . {here}/l1/submit.sh")


def _in_ram(tools: Tools) -> str:
    """Where L1 keeps its copy of this tools version (install.sh makes it)."""
    if not tools.key.isalnum():
        raise LabError(f"tools key {tools.key!r} is not a plain word: remove the tools cache entry and rerun")
    return f"/run/kvmlab/tools-{tools.key}"


def job_line(tools: Tools, job: str) -> Callable[[str, int, str], str]:
    """Agent.run's `via` for a job of the runner: the line has L1's agent shell source
    l1/job.sh from the tools' copy in L1's RAM (no program started: /kvmlab/run and
    submit.sh took about 30 ms more of each scenario, the median time outside its process
    0.127 -> 0.095 s), or, before that copy exists, run command(tools, job) through
    /kvmlab/run as before."""
    here = _in_ram(tools)
    if not all(c.isalnum() or c in "/._-" for c in job):
        raise LabError(f"job path {job!r} is not a plain path")

    def line(token: str, seconds: int, script: str) -> str:
        return (f"if [ -e {here}/.copied ] && [ -e {here}/l1/job.sh ]; "
                f"then . {here}/l1/job.sh {here} {token} {seconds} {job} {script}; "
                f"else /kvmlab/run {token} {seconds} {script}; fi")
    return line


#: In the share: the command with which L1 starts its runner as soon as it is ready
#: (images/l1/rootfs/kvmlab/late runs it), so that the first scenario finds it started.
EARLY_START = "runner-start"


#: In the share: there, L1 reads its QEMU into the page cache once its runner has started
#: (images/l1/rootfs/kvmlab/warm, run by late): not when the host saves L1 next.
WARM = "warm"


def start_early(share: Path, tools: Tools, warm: bool = True) -> None:
    """While L1 boots: the tools into the share, and the command L1 runs once it is ready
    to start its runner in the background (python's start and the imports took 2.4-4.2 s
    of the first scenario under TCG); with `warm`, L1 then reads its QEMU's files (a lab
    about to be saved does that after the save: they would make its state larger)."""
    sync_tools(share, tools)
    start = share / ".kvmlab" / EARLY_START
    partial = start.with_name(start.name + ".partial")
    partial.write_text(command(tools, "-") + "\n")
    partial.rename(start)
    flag = share / ".kvmlab" / WARM
    if warm:
        flag.touch()
    else:
        flag.unlink(missing_ok=True)


def start(paths: LabPaths, tools: Tools, timeout: float = 180) -> None:
    """Starts the runner now and waits until it is ready (before a snapshot is saved)."""
    sync_tools(paths.share, tools)
    status, output = Agent(paths).run_capture(command(tools, "-"), timeout=timeout)
    if status != 0:
        raise LabError(f"L1's scenario runner did not start (exit status {status}): {output.strip()[-300:]}")
