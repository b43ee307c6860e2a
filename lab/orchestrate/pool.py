"""Running scenarios on more than one lab at once (`kvmlab test -j N`): how many labs this
host can take, the helper labs brought up beside the main one, and the scenarios spread
over all of them."""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from typing import Callable

from lab.builder.build import Tools
from lab.config import LabConfig, meminfo_mib
from lab.core.errors import LabError, UserError
from lab.core.precedence import Precedence
from lab.core.progress import Progress
from lab.core.status import ERROR
from lab.machine.lab import Lab
from lab.scenarios.model import Scenario
from lab.scenarios.runner import Runner, Spread


def lab_capacity(memory_mib: int, wanted: int) -> tuple[int, str]:
    """How many labs of `memory_mib` this host runs at once (up to `wanted`), and why not more."""
    cpus = os.cpu_count() or 1
    available = meminfo_mib("MemAvailable") or memory_mib * wanted
    by_memory = max(1, available // (memory_mib + 512))  # QEMU's own share: TCG code cache, devices
    labs = min(wanted, cpus, by_memory)
    why = "" if labs == wanted else (f"{cpus} host CPUs" if labs == cpus else
                                     f"{available} MiB available, {memory_mib} MiB per lab")
    return labs, why


def helper_labs(cfg: LabConfig, jobs: int, progress: Progress) -> tuple[list[Callable[[], Lab | None]], list[Lab]]:
    """Functions that each bring up one more lab for `test -j` (run in the runner's threads),
    and the list they add the labs they started to (for the caller to stop)."""
    if jobs <= 1:
        return [], []
    labs, why = lab_capacity(cfg.machine_mib, jobs)
    if labs < jobs:
        progress.note(f"-j {jobs}: {labs} lab{'s' if labs > 1 else ''} at a time ({why})")
    started: list[Lab] = []

    def bring_up(helper_name: str) -> Callable[[], Lab | None]:
        def up() -> Lab | None:
            helper = Lab(helper_name)
            if helper.is_up() or helper.running():
                progress.note(f"lab {helper_name!r} is in use; the run goes on without it")
                return None
            try:
                helper.up(dataclasses.replace(cfg, name=helper_name, gdb=0))
            except (LabError, UserError) as exc:
                progress.note(f"lab {helper_name!r} did not come up ({exc}); the run goes on without it")
                return None
            started.append(helper)
            return helper
        return up

    names = [f"{cfg.name[:28]}-j{i}" for i in range(1, labs)]
    return [bring_up(n) for n in names], started


def spread_over(helpers: list[Callable[[], Lab | None]]) -> Spread | None:
    """The runner's strategy for `helpers`: None (one lab, in order) when there are none."""
    if not helpers:
        return None
    return lambda runner, scenarios, tools, started: run_pooled(runner, scenarios, helpers, tools, started)


def run_pooled(self: Runner, scenarios: list[Scenario], helpers: list[Callable[[], Lab | None]], tools: Tools,
               started: float) -> None:
    """`scenarios` spread over this runner's lab and the labs `helpers` bring up (each one
    more lab, or None if it could not): whichever lab is free takes the next scenario, the
    long ones first. The summary lists them in order."""
    order = {s.name: i for i, s in enumerate(scenarios)}
    # The longest first (an L2 Linux boot, a stress series), so no lab is left with one
    # long scenario at the end while the others idle.
    queue = sorted(scenarios, key=lambda s: (not (s.compare_thp or s.guest.kind == "linux" or s.repeat > 1),
                                             order[s.name]))
    lock = threading.Lock()
    stop = threading.Event()
    died: list[Scenario] = []
    self.summary["labs"] = [self.lab.name]
    # The main lab is served first by the host's CPUs, the helpers take what it leaves,
    # each coming forward as the labs before it run out of scenarios (lab/core/precedence.py).
    precedence = Precedence()
    precedence.enter(self.lab.pid())

    def work(runner: Runner) -> None:
        pid = runner.lab.pid()
        if runner is not self:
            precedence.enter(pid)
        try:
            take(runner)
        finally:
            precedence.leave(pid)

    def take(runner: Runner) -> None:
        while not stop.is_set():
            with lock:
                if not queue:
                    return
                scenario = queue.pop(0)
                if self.on_start:
                    self.on_start(scenario)
            result = runner.run_one(scenario, tools)
            data = {**result.as_dict(), "lab": runner.lab.name}
            with lock:
                self.summary["scenarios"].append(data)
                self.summary["scenarios"].sort(key=lambda d: order.get(d["name"], 0))
                self.save_summary(time.monotonic() - started)
                if self.on_result:
                    self.on_result(result)
            if result.status == ERROR and not runner.lab.is_up():
                with lock:
                    died.append(scenario)
                return

    helper_labs: list[Lab] = []

    def helper(bring_up: Callable[[], Lab | None]) -> None:
        lab = None if stop.is_set() else bring_up()
        if lab is None:
            return
        if stop.is_set():  # it came up after the run was stopped: nothing leaks
            lab.down(timeout=1)
            return
        with lock:
            helper_labs.append(lab)
        runner = Runner(lab, self.results, self.builder, progress=self.progress, count=self.count)
        runner.sync_tools()
        with lock:
            self.summary["labs"].append(lab.name)
        try:
            work(runner)
        finally:
            try:
                shutil.copyfile(lab.paths.console_log, self.results / f"l1-console-{lab.name}.log")
            except OSError:
                pass

    threads = [threading.Thread(target=helper, args=(h,), daemon=True) for h in helpers]
    for thread in threads:
        thread.start()
    try:
        work(self)
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except BaseException:
        # Ctrl-C or an error here: the other labs stop too (their scenario ends as the
        # lab goes), and nobody takes another scenario.
        stop.set()
        with lock:
            doomed = list(helper_labs)
        for lab in doomed:
            try:
                lab.down(timeout=1)
            except Exception:
                pass
        # A lab still booting is taken down by its own thread once `up` returns.
        for thread in threads:
            thread.join(60)
        raise
    if queue and died:  # every lab died: what is left was never run
        self.lab_died(died[0], list(queue))

