"""`kvmlab matrix`: one suite on several kernels, side by side.

Each kernel gets its own lab (named matrix-LABEL; matrix2-LABEL... when those are in use),
brought up (a Debian kernel's restored from its snapshot), run and brought down; up to
`jobs` at a time. Images are prepared first, one after another, so builds do not race and
their progress stays readable. The table has a row per scenario and a column per kernel; a
cell is the observed mapping without its fault counts (its "signature"), and a row whose
signatures differ is marked (≠); a row some kernel did not measure (a skip, an error, its
lab died) is marked apart (?), its other kernels still compared. Everything lands in one
results directory:

    RESULTS/matrix.json      kernels, and per scenario each kernel's status, observed, signature
    RESULTS/LABEL/           that kernel's suite results (summary.json, per-scenario artefacts)
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lab.builder.build import Builder
from lab.config import DEFAULT_KVM_MODE, LabConfig
from lab.core.errors import KvmlabError, UserError
from lab.core.precedence import Precedence
from lab.core.progress import Progress, stamp
from lab.core.status import ERROR, NOT_MEASURED, PASS, SKIP
from lab.core.versions import versions_match
from lab.machine.boot import KvmModeUnavailable
from lab.machine.lab import Lab
from lab.scenarios.jobs import l2_kernel
from lab.scenarios.model import Scenario
from lab.scenarios.result import ScenarioResult
from lab.scenarios.runner import Runner
from lab.scenarios.shard import durations
from lab.shared.files import write_json


@dataclass
class KernelColumn:
    spec: str
    label: str
    config: LabConfig
    release: str = ""
    summary: dict[str, Any] | None = None
    error: str = ""
    #: why this kernel or L0 cannot give the column's KVM mode: a skipped column, not a failure
    skipped: str = ""
    seconds: float = 0.0
    lab: Lab | None = field(default=None, repr=False)
    #: the L0 pid of the lab this run brought up: only that lab is taken down (another
    #: matrix running at the same time may hold a lab of the same name)
    pid: int | None = None

    def ours(self) -> bool:
        return self.lab is not None and self.pid is not None and self.lab.is_up() and self.lab.pid() == self.pid


def signature(s: dict[str, Any]) -> str:
    """The observed mapping without fault counts: what is compared across kernels."""
    if s["status"] in NOT_MEASURED:
        return s["status"]
    checks = s.get("checks") or []
    if checks and checks[0].get("check") == "fault_ratio":
        # A ratio moves from run to run; what it says is whether it clears the bar.
        return s["expected"] if s["status"] == PASS else "below: " + s["expected"]
    return re.sub(r"\s*\([^)]*\)", "", s.get("observed") or "").strip() or s["status"]


def rows(columns: list[KernelColumn]) -> list[dict[str, Any]]:
    """Per scenario (in suite order): each kernel's cell, and whether the kernels differ."""
    return rows_of([(c.label, c.summary) for c in columns])


def rows_of(columns: list[tuple[str, dict[str, Any] | None]]) -> list[dict[str, Any]]:
    """rows() of (label, summary) pairs."""
    names: list[str] = []
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for label, summary in columns:
        for s in (summary or {}).get("scenarios", []):
            if s["name"] not in cells:
                names.append(s["name"])
                cells[s["name"]] = {}
            cells[s["name"]][label] = {"status": s["status"], "observed": s.get("observed", ""),
                                       "signature": signature(s), "reasons": s.get("reasons", [])[:1]}
    ran = [label for label, summary in columns if summary]
    out = []
    for name in names:
        row = cells[name]
        # n/a is compared (the kernel lacks what the scenario needs: a difference between
        # kernels); a skip, an error or a missing cell (the lab died) says nothing either way.
        unmeasured = [label for label in ran if row.get(label, {}).get("status", ERROR) in (SKIP, ERROR)]
        signatures = {c["signature"] for label, c in row.items() if label not in unmeasured}
        out.append({"name": name, "cells": row, "differs": len(signatures) > 1, "unmeasured": unmeasured})
    return out


def plan(kernels: list[str], base_config: Callable[[str, str], LabConfig],
         kvm_modes: list[str] | None = None) -> list[KernelColumn]:
    """A column per kernel (and per KVM mode, with `kvm_modes`: 'trixie-nvhe'), with its
    lab's config; labels must be distinct."""
    from lab.kernels.spec import parse

    columns: list[KernelColumn] = []
    for text in kernels:
        try:
            kernel_label = parse(text).label
        except ValueError as exc:
            raise UserError(f"--kernels: {exc}") from None
        for mode in kvm_modes or [""]:
            label = f"{kernel_label}-{mode}" if mode else kernel_label
            if any(c.label == label for c in columns):
                raise UserError(f"--kernels: {text} is given twice (as {label})")
            config = base_config(text, lab_name(label))
            if mode:
                config.kvm_mode = mode
            columns.append(KernelColumn(text, label, config))
    return columns


def choose_snapshots(columns: list[KernelColumn], wanted: bool | None) -> None:
    """`--snapshot/--no-snapshot`, or by default: restored from snapshots for Debian kernels
    in the default KVM mode (a matrix's labs live for one suite; the first matrix on a
    kernel saves its snapshot, later ones restore it and its ready scenario runner: the thp
    matrix of 4 kernels took 137 s booting, 106-120 s restoring, the same cells, on 2
    CPUs, 2026-12-04). A user's Image or tree is often built once: it boots, as the
    config's lab.snapshot says; so do the other modes (their restores are not tested)."""
    from lab.kernels.spec import parse

    for column in columns:
        if wanted is not None:
            column.config.snapshot = wanted
        elif parse(column.spec).kind in ("suite", "debian") and column.config.kvm_mode == DEFAULT_KVM_MODE:
            column.config.snapshot = True


def lab_name(label: str, n: int = 1) -> str:
    """The lab of a column: matrix-LABEL, or matrixN-LABEL for the Nth matrix at once."""
    return f"matrix{n if n > 1 else ''}-{label}"[:32].rstrip("-.")


def take_free_names(columns: list[KernelColumn], echo: Callable[[str], None]) -> None:
    """Labs matrix-LABEL, or matrix2-LABEL, matrix3-LABEL... when a lab of those names
    runs (another matrix, or one left up): two matrices at once each get labs of their own."""
    def names(n: int) -> list[str]:
        return [lab_name(c.label, n) for c in columns]

    def in_use(n: int) -> list[str]:
        return [name for name in names(n) if Lab(name).is_up() or Lab(name).running()]

    n, taken = 1, in_use(1)
    if taken:
        n = next((k for k in range(2, 100) if not in_use(k)), 0)
        if not n:
            raise UserError("labs matrix-LABEL to matrix99-LABEL are all in use; `kvmlab status` lists them")
        echo(f"labs {', '.join(taken)} are in use (another matrix, or left up): this run uses "
             f"{', '.join(names(n))}")
    for column, name in zip(columns, names(n)):
        column.config.name = name


def default_jobs(columns: int, cpus: int) -> int:
    """Labs at a time when -j is not given (before the host's CPUs and memory cap it): two,
    or one per 2 CPUs from 4 CPUs. Two on 2 CPUs: one lab's QEMU keeps 1.2 of them busy on
    average (the L1 runs mostly one thing at a time); measured on 2 CPUs, the thp matrix of
    4 kernels took 358 s with -j1 and 308 s with -j2, longest first (2026-12-04)."""
    return max(1, min(columns, max(2, cpus // 2)))


#: Seconds a scenario that does not apply to a kernel takes to be found n/a.
NOT_APPLICABLE_SECONDS = 0.5


def longest_first(columns: list[KernelColumn], scenarios: list[Scenario],
                  seconds: dict[str, float]) -> list[KernelColumn]:
    """The order the columns' labs start in, with more than one at a time: the longest
    expected suite first, so that the last to start is a short one. A column's estimate:
    the recorded seconds (configs/suites/durations.json) of the scenarios whose `kernels`
    take its release."""
    def cost(column: KernelColumn) -> float:
        return sum(seconds.get(s.name, 1.0) if not s.kernels or versions_match(s.kernels, column.release)
                   else NOT_APPLICABLE_SECONDS for s in scenarios)
    return sorted(columns, key=lambda c: -cost(c))


#: What runs on each kernel's lab instead of scenarios (`--selftests`): (lab, its results
#: directory, on_result) -> the summary.
Work = Callable[[Lab, Path, Callable[[ScenarioResult], None]], dict[str, Any]]


def run(columns: list[KernelColumn], scenarios: list[Scenario], targets: list[str], out: Path, jobs: int,
        progress: Progress, echo: Callable[[str], None], shard: dict[str, Any] | None = None,
        work: Work | None = None) -> dict[str, Any]:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    take_free_names(columns, echo)
    builder = Builder(progress=progress)
    builder.tools()
    for column in columns:  # builds, one at a time, before any lab starts
        builder.rootfs(column.config)
        column.release = builder.kernel(column.config).release
    if columns and work is None:
        l2_kernel(builder, columns[0].config.as_dict()["images"], scenarios)
    lock = threading.Lock()
    # With more than one lab at a time, the first to come up is served first by the host's
    # CPUs and the others take what it leaves (lab/core/precedence.py).
    precedence = Precedence()

    def say(text: str) -> None:
        with lock:
            echo(stamp(text))

    def one(column: KernelColumn) -> None:
        t0 = time.monotonic()
        lab = column.lab = Lab(column.config.name, Progress(quiet=True))
        try:
            info = lab.up(column.config, builder=Builder())
            column.pid = lab.pid()
            precedence.enter(column.pid)
            column.release = info.release
            say(f"[{column.label}] up: {info.release} in {info.seconds:.1f} s")

            def on_result(r: ScenarioResult) -> None:
                say(f"[{column.label}] {r.status.upper():<5} {r.name}  {r.observed}  ({r.seconds:.1f} s)")

            if work is not None:
                column.summary = work(lab, out / column.label, on_result)
            else:
                column.summary = Runner(lab, out / column.label, on_result=on_result,
                                        targets=targets, shard=shard).run(scenarios)
        except KvmModeUnavailable as exc:
            column.skipped = exc.message
            say(f"[{column.label}] SKIP {exc.message}")
        except KvmlabError as exc:
            column.error = exc.message
            say(f"[{column.label}] ERROR {exc.message}")
        finally:
            precedence.leave(column.pid)
            if column.ours():
                lab.down()
            column.seconds = round(time.monotonic() - t0, 1)

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    order = longest_first(columns, scenarios, durations()) if jobs > 1 and work is None else columns
    futures = [pool.submit(one, c) for c in order]
    try:
        for future in futures:
            future.result()
    except BaseException:
        # Ctrl-C or an unexpected error: stop every lab (their runs then end) and wait.
        for future in futures:
            future.cancel()
        for column in columns:
            if column.lab is not None and column.ours():
                try:
                    column.lab.down(timeout=2)
                except KvmlabError:
                    pass
        pool.shutdown(wait=True)
        raise
    pool.shutdown()
    matrix: dict[str, Any] = {
        "targets": targets or ["thp"],
        "kernels": [{"spec": c.spec, "label": c.label, "release": c.release, "lab": c.config.name,
                     "results_dir": str(out / c.label), "error": c.error, "seconds": c.seconds,
                     "kvm_mode": c.config.kvm_mode, "skipped": c.skipped,
                     "passed": bool(c.skipped) or bool(c.summary and c.summary.get("passed")) and not c.error}
                    for c in columns],
        "scenarios": rows(columns),
        "jobs": jobs,
        "seconds": round(time.monotonic() - started, 1),
        "results_dir": str(out),
    }
    matrix["differing"] = [r["name"] for r in matrix["scenarios"] if r["differs"]]
    matrix["unmeasured"] = [r["name"] for r in matrix["scenarios"] if r["unmeasured"]]
    matrix["passed"] = all(k["passed"] for k in matrix["kernels"])
    write_json(out / "matrix.json", matrix)
    return matrix
